//! A client's session from authentication to its first ReadyForQuery:
//! the startup parameters become its settings, a shard's ParameterStatus is
//! mirrored, and the session is served until the client leaves.

use super::*;

impl Session {
    /// Sends ParameterStatus (mirrored from a shard), BackendKeyData and the
    /// first ReadyForQuery.
    pub(super) async fn greet(&mut self, pid: i32) -> Result<(), Error> {
        self.write(&protocol::authentication(
            pgwire::messages::startup::Authentication::Ok,
        ))
        .await?;
        let map = &self.shared.map();
        let order: Vec<ShardId> = std::iter::once(map.default_shard)
            .chain(
                (0..map.shards)
                    .map(ShardId)
                    .filter(|s| *s != map.default_shard),
            )
            .collect();
        let mut last = None;
        let mut params = None;
        for shard in order {
            match self.checkout(shard).await {
                Ok(conn) => {
                    params = Some(conn.params.clone());
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(mut params) = params else {
            return Err(last.unwrap_or_else(|| Error::Unsupported("no shards configured".into())));
        };
        params.insert("session_authorization".into(), self.user.clone());
        params.insert("is_superuser".into(), "off".into());
        for (k, v) in &params {
            self.write(&protocol::parameter_status(k, v)).await?;
        }
        let secret: i32 = rand::random();
        (self.cancel_targets, self.cancel_signal) = self.shared.cancels.register(pid, secret);
        self.write(&protocol::backend_key_data(pid, secret)).await?;
        self.write(protocol::ready_for_query(b'I')).await?;
        self.out.flush().await?;
        Ok(())
    }
}

pub(crate) async fn run(
    r: ClientRead,
    w: ClientWrite,
    watch: Option<tokio::net::TcpStream>,
    peer: SocketAddr,
    params: Vec<(String, String)>,
    pid: i32,
    shared: Arc<Shared>,
) {
    // A name given twice counts once, the later value, as in PostgreSQL.
    let get = |k: &str| params.iter().rfind(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut reader = BufReader::with_capacity(16 * 1024, r);
    let mut out = BufWriter::with_capacity(32 * 1024, w);
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        send_fatal(&mut out, &Error::Client(ClientError::NoUser)).await;
        return;
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let config = shared.config();
    let lookup = shared.password_lookup();
    let limit = Duration::from_millis(config.limits.startup_timeout_ms);
    let authenticated = tokio::time::timeout(
        limit,
        auth::login(
            &mut reader,
            &mut out,
            &user,
            &config,
            lookup.as_deref(),
            &shared.secrets,
        ),
    )
    .await
    .unwrap_or(Err(ClientError::StartupTimeout.into()));
    if let Err(r) = authenticated {
        match r.miss {
            Some(m) => {
                warn!(%peer, %user, error = %r.error, reason = m.as_str(), "authentication failed")
            }
            None => warn!(%peer, %user, error = %r.error, "authentication failed"),
        }
        send_fatal(&mut out, &Error::Client(r.error)).await;
        return;
    }
    if database == shared.config().admin_database {
        if !shared.config().admin_users.contains(&user) {
            send_fatal(&mut out, &Error::Client(ClientError::NotAdmin(user))).await;
            return;
        }
        shared.sessions.add(pid, &user, peer);
        info!(%peer, %user, "admin console connected");
        admin_console(reader, out, &shared, pid).await;
        shared.sessions.remove(pid);
        return;
    }
    if database != shared.config().database {
        send_fatal(&mut out, &unknown_database(&database)).await;
        return;
    }
    // PostgreSQL applies `options` first, then the other parameters in
    // packet order; the last value of a name wins.
    let mut given: Vec<(String, String)> = match get("options").map(|o| option_settings(&o)) {
        Some(Ok(set)) => set,
        Some(Err(e)) => {
            send_fatal(&mut out, &Error::Client(e)).await;
            return;
        }
        None => Vec::new(),
    };
    for (k, v) in &params {
        match k.as_str() {
            "user" | "database" | "replication" | "options" => {}
            _ => given.push((k.clone(), v.clone())),
        }
    }
    let mut startup_settings = BTreeMap::new();
    for (k, v) in &given {
        let name = k.to_lowercase();
        let set = format!("SET {} = {}", quote_ident(k), quote_literal(v));
        // A search path through Pieskieo's own schema, or strings read
        // without standard conformance, are refused here as in a statement.
        let check = match name.as_str() {
            "standard_conforming_strings" => format!("SET {name} = {}", quote_literal(v)),
            _ => set.clone(),
        };
        match crate::router::plan(&check, &shared.map()) {
            Err(e @ crate::router::RouteError::Reserved) => {
                send_fatal(&mut out, &Error::Route(e)).await;
                return;
            }
            Err(e @ crate::router::RouteError::Unsupported(_))
                if name == "standard_conforming_strings" =>
            {
                send_fatal(&mut out, &Error::Route(e)).await;
                return;
            }
            _ => {}
        }
        startup_settings.insert(name, set);
    }
    let max = shared.config().limits.max_message_size;
    let mut s = Session {
        shared,
        frames: Some(reader::Frames::new(reader, max)),
        watch,
        out,
        peer,
        user,
        settings: startup_settings.clone(),
        startup_settings,
        block: Block::Default,
        txn: None,
        doomed: Vec::new(),
        hold_last: false,
        held: None,
        risky: false,
        learn_from: None,
        learn_at_commit: None,
        ext: Default::default(),
        sql_prepared: Default::default(),
        need_prepared: None,
        ext_stages: false,
        cancel_targets: Default::default(),
        cancel_signal: Default::default(),
        cancel_seen: 0,
        kept: Default::default(),
        process_id: pid,
    };
    if let Err(e) = s.greet(pid).await {
        warn!(%peer, user = %s.user, error = %e, "session setup failed");
        send_fatal(&mut s.out, &e).await;
        return;
    }
    info!(%peer, user = %s.user, "client connected");
    s.shared.sessions.add(pid, &s.user, peer);
    s.serve().await;
    s.kept.release_all(&s.shared.pools);
    s.cleanup().await;
    s.shared.cancels.unregister(s.process_id);
    s.shared.sessions.remove(pid);
    info!(%peer, user = %s.user, "client disconnected");
}

/// The settings in a startup packet's `options`, as PostgreSQL reads them
/// (`pg_split_opts`, then its switches): arguments split at unescaped white
/// space as C's `isspace` knows it (`\` escapes the next character), each
/// `-c name=value`, `-cname=value` or `--name=value`, with `-` in a name
/// read as `_`; `--` ends them. Malformed arguments get PostgreSQL's 42601;
/// other server switches are refused.
fn option_settings(options: &str) -> Result<Vec<(String, String)>, ClientError> {
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r');
    let mut args = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|&c| space(c)).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next_if(|&c| !space(c)) {
            match c {
                '\\' => arg.extend(chars.next()),
                c => arg.push(c),
            }
        }
        args.push(arg);
    }
    let invalid = |a: &str| {
        ClientError::OptionSyntax(format!(
            "invalid command-line argument for server process: {a}"
        ))
    };
    let mut settings = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let (flag, pair) = if a == "--" {
            // The end of the switches: anything after it is no setting.
            return match args.next() {
                Some(rest) => Err(invalid(&rest)),
                None => Ok(settings),
            };
        } else if a == "-c" {
            ("-c ", args.next().ok_or_else(|| invalid(&a))?)
        } else if let Some(rest) = a.strip_prefix("--") {
            ("--", rest.to_string())
        } else if let Some(rest) = a.strip_prefix("-c") {
            ("-c ", rest.to_string())
        } else if a.starts_with('-') && a.len() > 1 {
            return Err(ClientError::StartupOption(a));
        } else {
            return Err(invalid(&a));
        };
        let Some((name, value)) = pair.split_once('=') else {
            return Err(ClientError::OptionSyntax(format!(
                "{flag}{pair} requires a value"
            )));
        };
        if name.is_empty() {
            return Err(ClientError::StartupOption(pair));
        }
        settings.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::option_settings;

    #[test]
    fn options_read_as_postgresql_reads_them() {
        let pairs = |o: &str| option_settings(o).map_err(|e| e.to_string());
        assert_eq!(
            pairs("-c search_path=a,b  --statement-timeout=5s -cwork_mem=64kB").unwrap(),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64kB".into()),
            ]
        );
        assert_eq!(
            pairs(r"-c application_name=a\ b").unwrap(),
            vec![("application_name".into(), "a b".into())]
        );
        assert!(pairs("").unwrap().is_empty());
        assert!(pairs("-B 100").unwrap_err().contains("\"-B\""));
        assert_eq!(
            pairs("-c").unwrap_err(),
            "invalid command-line argument for server process: -c"
        );
        assert_eq!(
            pairs("-c work_mem").unwrap_err(),
            "-c work_mem requires a value"
        );
        assert_eq!(
            pairs("--work-mem").unwrap_err(),
            "--work-mem requires a value"
        );
        assert_eq!(
            pairs("\\").unwrap_err(),
            "invalid command-line argument for server process: "
        );
        assert_eq!(
            pairs("-c\x0bwork_mem=64kB\x0c-c a=b").unwrap(),
            vec![("work_mem".into(), "64kB".into()), ("a".into(), "b".into())]
        );
        assert_eq!(pairs("-c a=b --").unwrap(), vec![("a".into(), "b".into())]);
        assert!(pairs("-c a=b -- -c").unwrap_err().contains("argument"));
    }
}

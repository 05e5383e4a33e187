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
        self.cancel_targets = self.shared.cancels.register(pid, secret);
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
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut reader = BufReader::with_capacity(16 * 1024, r);
    let mut out = BufWriter::with_capacity(32 * 1024, w);
    let Some(user) = get("user") else {
        let e = Error::Client(ClientError::Protocol(
            "no PostgreSQL user name specified in startup packet".into(),
        ));
        send_fatal(&mut out, &e).await;
        return;
    };
    let database = get("database").unwrap_or_else(|| user.clone());
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
    let mut given: Vec<(String, String)> = Vec::new();
    for (k, v) in &params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => match option_settings(v) {
                Ok(set) => given.extend(set),
                Err(e) => {
                    send_fatal(&mut out, &Error::Client(e)).await;
                    return;
                }
            },
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

/// The settings in a startup packet's `options`, as PostgreSQL reads them:
/// arguments split at unescaped white space (`\` escapes the next
/// character), each `-c name=value`, `-cname=value` or `--name=value`, with
/// `-` in a name read as `_`. Other server switches are refused.
fn option_settings(options: &str) -> Result<Vec<(String, String)>, ClientError> {
    let mut args = Vec::new();
    let mut arg = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => arg.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !arg.is_empty() {
                    args.push(std::mem::take(&mut arg));
                }
            }
            c => arg.push(c),
        }
    }
    if !arg.is_empty() {
        args.push(arg);
    }
    let mut settings = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let pair = if a == "-c" {
            args.next()
                .ok_or_else(|| ClientError::StartupOption(a.clone()))?
        } else if let Some(rest) = a.strip_prefix("--").or_else(|| a.strip_prefix("-c")) {
            rest.to_string()
        } else {
            return Err(ClientError::StartupOption(a));
        };
        let Some((name, value)) = pair.split_once('=') else {
            return Err(ClientError::StartupOption(pair));
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
        assert!(pairs("-c").is_err());
        assert!(pairs("-c work_mem").is_err());
    }
}

//! A client's session from authentication to its first ReadyForQuery:
//! the startup parameters become its settings, a shard's ParameterStatus is
//! mirrored, and the session is served until the client leaves.

use super::*;

impl Session {
    /// Sends ParameterStatus (mirrored from a shard), BackendKeyData and the
    /// first ReadyForQuery.
    pub(super) async fn greet(&mut self, pid: i32) -> Result<(), Error> {
        self.write(&protocol::authentication(0, &[])).await?;
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
        self.write(&protocol::ready_for_query(b'I')).await?;
        self.out.flush().await?;
        Ok(())
    }
}

pub(crate) async fn run(
    r: ClientRead,
    w: ClientWrite,
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
    let ucfg = shared
        .config()
        .users
        .iter()
        .find(|u| u.name == user)
        .cloned();
    let limit = Duration::from_millis(shared.config().limits.startup_timeout_ms);
    let authenticated = tokio::time::timeout(
        limit,
        auth::authenticate(&mut reader, &mut out, &user, ucfg.as_ref(), &shared.secrets),
    )
    .await
    .unwrap_or(Err(ClientError::StartupTimeout));
    if let Err(e) = authenticated {
        warn!(%peer, %user, error = %e, "authentication failed");
        send_fatal(&mut out, &Error::Client(e)).await;
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
    let mut startup_settings = BTreeMap::new();
    for (k, v) in &params {
        if matches!(k.as_str(), "user" | "database" | "options" | "replication") {
            continue;
        }
        let name = k.to_lowercase();
        startup_settings.insert(
            name,
            format!("SET {} = {}", quote_ident(k), quote_literal(v)),
        );
    }
    let mut s = Session {
        shared,
        reader: Some(reader),
        frames: None,
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
        cancel_targets: Default::default(),
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
    s.cleanup().await;
    s.shared.cancels.unregister(s.process_id);
    s.shared.sessions.remove(pid);
    info!(%peer, user = %s.user, "client disconnected");
}

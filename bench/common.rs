//! Helpers the benchmark programs share (each includes this file).

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `n` fresh PostgreSQL servers (64 MB of shared buffers each) in a
/// throwaway directory: the directory, to remove at the end, and the servers.
#[allow(dead_code)] // not every benchmark starts its servers this way
pub fn start_servers(n: usize) -> (std::path::PathBuf, Vec<pieskieo::cluster::LocalServer>) {
    use std::os::unix::fs::PermissionsExt;
    let bindir = pieskieo::cluster::find_bindir().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("pieskieo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let servers = (0..n)
        .map(|i| {
            let s = pieskieo::cluster::LocalServer::create(
                &bindir,
                &dir.join(format!("shard{i}")),
                free_port(),
                &[("shared_buffers", "'64MB'")],
            )
            .unwrap();
            s.start().unwrap();
            s
        })
        .collect();
    (dir, servers)
}

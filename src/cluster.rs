//! Local PostgreSQL servers for `pieskieo demo` and the tests: find the
//! binaries, `initdb`, start and stop — as the unprivileged `postgres` user
//! when run as root, since PostgreSQL refuses to run as root.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to tell someone whose machine has no PostgreSQL server binaries.
pub const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH, via `pg_config --bindir`, or under /usr/lib/postgresql/*/bin; install them, e.g. `apt-get install -y postgresql`";

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn find_bindir() -> Result<PathBuf, String> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                // Resolve symlinks: initdb finds `postgres` next to its real path.
                if let Some(real) = initdb
                    .canonicalize()
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                {
                    if has_tools(&real) {
                        return Ok(real);
                    }
                }
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| INSTALL_HINT.to_string())
}

/// The user servers run as: `postgres` when we are root, else ourselves.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&"postgres") && f.len() > 3 {
            let uid = f[2]
                .parse()
                .map_err(|_| "bad uid for postgres".to_string())?;
            let gid = f[3]
                .parse()
                .map_err(|_| "bad gid for postgres".to_string())?;
            return Ok(Some((uid, gid)));
        }
    }
    Err("running as root, and there is no `postgres` user to run PostgreSQL as (PostgreSQL refuses to run as root); create one, e.g. `useradd -m postgres`".into())
}

/// One local PostgreSQL server, identified by its data directory.
#[derive(Debug, Clone)]
pub struct LocalServer {
    pub bindir: PathBuf,
    pub data_dir: PathBuf,
    pub port: u16,
    owner: Option<(u32, u32)>,
}

/// The `postgres` superuser's password on servers this module creates.
pub const SUPERUSER_PASSWORD: &str = "postgres";

impl LocalServer {
    /// A server over `data_dir`, created with `initdb` unless it exists already.
    /// `settings` are appended to `postgresql.conf` on creation.
    pub fn create(
        bindir: &Path,
        data_dir: &Path,
        port: u16,
        settings: &[(&str, &str)],
    ) -> Result<LocalServer, String> {
        let owner = run_as()?;
        let server = LocalServer {
            bindir: bindir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            port,
            owner,
        };
        if data_dir.join("PG_VERSION").exists() {
            return Ok(server);
        }
        std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let pwfile = data_dir.with_extension("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)
            .map_err(|e| format!("{}: {e}", pwfile.display()))?;
        server.give(data_dir)?;
        server.give(&pwfile)?;
        let pw_arg = format!("--pwfile={}", pwfile.display());
        let r = server.run(
            "initdb",
            &[
                "-D",
                &data_dir.display().to_string(),
                "-U",
                "postgres",
                &pw_arg,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ],
        );
        let _ = std::fs::remove_file(&pwfile);
        r?;
        server.append_settings(
            "\n# added by pieskieo\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 300\nmax_prepared_transactions = 300\n",
            settings,
        )?;
        Ok(server)
    }

    /// As [`LocalServer::create`], from a copy of `template`, the data
    /// directory of a stopped server that `create` made (with no
    /// `settings`): `initdb` takes over a second of CPU, the copy a tenth,
    /// and the tests start hundreds of servers.
    pub fn create_from(
        bindir: &Path,
        template: &Path,
        data_dir: &Path,
        port: u16,
        settings: &[(&str, &str)],
    ) -> Result<LocalServer, String> {
        let server = LocalServer {
            bindir: bindir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            port,
            owner: run_as()?,
        };
        // `cp -a` keeps the owner (the `postgres` user) and the modes
        // PostgreSQL checks (0700 on the directory).
        let out = Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(data_dir)
            .output()
            .map_err(|e| format!("cp: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cp -a {} {}: {}",
                template.display(),
                data_dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        server.append_settings("\n# added by pieskieo (copy)\n", settings)?;
        Ok(server)
    }

    /// Makes `template` for [`LocalServer::create_from`]: `create` into a
    /// directory of its own, then the rename, so a half-made template is
    /// never seen.
    pub fn create_template(bindir: &Path, template: &Path) -> Result<(), String> {
        let making = template.with_extension("making");
        let _ = std::fs::remove_dir_all(&making);
        LocalServer::create(bindir, &making, 0, &[])?;
        std::fs::rename(&making, template).map_err(|e| format!("{}: {e}", template.display()))
    }

    /// Appends `head` and then `settings` to `postgresql.conf`.
    fn append_settings(&self, head: &str, settings: &[(&str, &str)]) -> Result<(), String> {
        let mut conf = String::from(head);
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let path = self.data_dir.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        text.push_str(&conf);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Copies `from` into the data directory as `name`, readable by the
    /// server's user only (as PostgreSQL wants of `ssl_key_file`).
    pub fn install_file(&self, name: &str, from: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let to = self.data_dir.join(name);
        std::fs::copy(from, &to)
            .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", to.display()))?;
        self.give(&to)
    }

    /// Hands a path to the server's user.
    fn give(&self, path: &Path) -> Result<(), String> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
        Ok(())
    }

    fn run(&self, prog: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(self.bindir.join(prog));
        cmd.args(args).current_dir("/").env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid).env("HOME", "/tmp");
        }
        let out = cmd.output().map_err(|e| format!("{prog}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{prog} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), String> {
        let log = self.data_dir.join("server.log");
        let port = format!("-p {}", self.port);
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "60",
                "-o",
                &port,
                "start",
            ],
        )
        .map(|_| ())
        .map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            format!(
                "{e}\nserver log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
    }

    /// Stops the server; `mode` is `fast` or `immediate` (a crash, as far as
    /// the server is concerned).
    pub fn stop(&self, mode: &str) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir.display().to_string(),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )
        .map(|_| ())
    }

    pub fn is_running(&self) -> bool {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir.display().to_string(), "status"],
        )
        .is_ok()
    }
}

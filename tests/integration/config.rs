//! `pieskieo check` validates a configuration and names what is wrong.

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "pieskieo-check-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pieskieo.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pieskieo"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_accepts_the_example_and_names_bad_fields() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/pieskieo.toml"))
            .unwrap();
    let (ok, out) = check(&example);
    assert!(ok, "{out}");
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/compose.toml"))
            .unwrap();
    let (ok, out) = check(&compose);
    assert!(ok, "{out}");

    let (ok, out) = check(&example.replace("key_type = \"int8\"", "key_type = \"float8\""));
    assert!(!ok);
    assert!(
        out.contains("pieskieo.toml") && out.contains("key_type"),
        "{out}"
    );

    let (ok, out) = check(&format!("unknown_setting = 1\n{example}"));
    assert!(!ok);
    assert!(out.contains("unknown_setting"), "{out}");

    let (ok, out) = check(&format!(
        "{example}\n[tls]\ncert = \"/nonexistent/server.crt\"\nkey = \"/nonexistent/server.key\"\n"
    ));
    assert!(!ok);
    assert!(
        out.contains("field `tls.cert`") && out.contains("/nonexistent/server.crt"),
        "{out}"
    );

    let (ok, out) = check(&example.replacen("pool_size = 10", "pool_size = 0", 1));
    assert!(!ok);
    assert!(out.contains("shards[0].pool_size"), "{out}");
}

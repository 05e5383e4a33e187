//! The startup phase, message by message, against one plain PostgreSQL:
//! malformed startup packets, cancel requests, repeated SSL/GSS requests,
//! protocol versions and the order in which startup parameters apply.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::harness::{field, startup_message, startup_packet, Cluster, RawClient, Servers};

const SSL: i32 = 80877103;
const GSS: i32 = 80877104;
const CANCEL: i32 = 80877102;

fn coded(code: i32, rest: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(rest);
    startup_packet(&body)
}

/// What a server answered a sequence of startup packets: each one-byte
/// SSL/GSS answer, each message (errors by SQLSTATE and text, the rest by
/// type and bytes) up to the first authentication request, and whether it
/// then closed the connection.
async fn outcome<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, packets: &[Vec<u8>]) -> Vec<String> {
    let mut seen = Vec::new();
    let wait = Duration::from_secs(5);
    let mut pending = None;
    for p in packets {
        s.write_all(p).await.unwrap();
        let code = p
            .get(4..8)
            .map_or(0, |c| i32::from_be_bytes(c.try_into().unwrap()));
        if code != SSL && code != GSS {
            continue;
        }
        match tokio::time::timeout(wait, s.read_u8()).await {
            Ok(Ok(b @ (b'S' | b'N' | b'G'))) => seen.push((b as char).to_string()),
            Ok(Ok(tag)) => {
                pending = Some(tag);
                break;
            }
            Ok(Err(_)) => {
                seen.push("closed".into());
                return seen;
            }
            Err(_) => {
                seen.push("no answer".into());
                return seen;
            }
        }
    }
    loop {
        let tag = match pending.take() {
            Some(t) => t,
            None => match tokio::time::timeout(wait, s.read_u8()).await {
                Ok(Ok(t)) => t,
                Ok(Err(_)) => {
                    seen.push("closed".into());
                    return seen;
                }
                Err(_) => {
                    seen.push("no answer".into());
                    return seen;
                }
            },
        };
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0; len as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        match tag {
            b'E' => seen.push(format!("E {} {}", field(&body, b'C'), field(&body, b'M'))),
            b'R' => {
                seen.push(format!(
                    "R {}",
                    i32::from_be_bytes(body[..4].try_into().unwrap())
                ));
                return seen;
            }
            t => seen.push(format!("{} {:?}", t as char, body)),
        }
    }
}

async fn both(pg: u16, proxy: u16, packets: &[Vec<u8>]) -> (Vec<String>, Vec<String>) {
    let mut a = TcpStream::connect(("127.0.0.1", pg)).await.unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", proxy)).await.unwrap();
    (
        outcome(&mut a, packets).await,
        outcome(&mut b, packets).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unusual_startup_packets_are_answered_as_postgresql_answers_them() {
    let c = Cluster::start(1).await;
    let pg = Servers::start(1);
    let pg = pg.servers[0].port;
    let body = |rest: &[u8]| coded(196608, rest);
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "a well-formed packet",
            vec![startup_message(&[("user", "postgres")])],
        ),
        (
            "a key without a value",
            vec![body(b"user\0postgres\0orphan\0\0")],
        ),
        (
            "a key without a value at the very end",
            vec![body(b"user\0postgres\0orphan\0")],
        ),
        ("no final terminator", vec![body(b"user\0postgres\0")]),
        (
            "bytes after the terminator",
            vec![body(b"user\0postgres\0\0junk")],
        ),
        (
            "no user name",
            vec![startup_message(&[("database", "postgres")])],
        ),
        (
            "protocol 3.2 and an unknown protocol option",
            vec![coded(
                (3 << 16) | 2,
                b"user\0postgres\0_pq_.frobnicate\0on\0\0",
            )],
        ),
        (
            "protocol 3.0 and an unknown protocol option",
            vec![body(b"user\0postgres\0_pq_.frobnicate\0on\0\0")],
        ),
        ("protocol 4.0", vec![coded(4 << 16, b"user\0postgres\0\0")]),
        (
            "an empty user name",
            vec![body(b"user\0\0database\0postgres\0\0")],
        ),
        (
            "a user name given twice, the last empty",
            vec![body(b"user\0postgres\0user\0\0\0")],
        ),
        (
            "replication neither boolean nor database",
            vec![body(b"user\0postgres\0replication\0maybe\0\0")],
        ),
        (
            "replication off",
            vec![body(b"user\0postgres\0replication\0of\0\0")],
        ),
        (
            "a name that is not UTF-8 in a packet of the wrong layout",
            vec![body(b"user\0t\xe9\0orphan\0")],
        ),
        (
            "a startup message sent with the SSL request, before its answer",
            vec![[coded(SSL, b""), startup_message(&[("user", "postgres")])].concat()],
        ),
        ("a packet too short", vec![startup_packet(&[0, 3])]),
        (
            "a packet as long as allowed",
            vec![startup_message(&[
                ("user", "postgres"),
                ("application_name", &"x".repeat(9_963)),
            ])],
        ),
        (
            "a packet too long",
            vec![[
                10_005i32.to_be_bytes().to_vec(),
                196608i32.to_be_bytes().to_vec(),
            ]
            .concat()],
        ),
        (
            "a cancel request too long",
            vec![coded(CANCEL, &[0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 0])],
        ),
        (
            "a cancel request too short",
            vec![coded(CANCEL, &[0, 0, 0, 7])],
        ),
        (
            "SSL refused, then SSL again",
            vec![coded(SSL, b""), coded(SSL, b"")],
        ),
    ];
    let mut wrong = Vec::new();
    for (what, packets) in &cases {
        let (want, got) = both(pg, c.port(), packets).await;
        if want != got {
            wrong.push(format!(
                "{what}:\n  PostgreSQL {want:?}\n  Pieskieo   {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        startup_message(&[
            ("user", "postgres"),
            ("application_name", &"x".repeat(9_963))
        ])
        .len(),
        10_004
    );

    // The test servers offer GSS encryption, which the proxy never does, so
    // here the proxy is held to what a PostgreSQL built without it answers:
    // "N", one GSS request and one SSL request in either order, then 0A000.
    let mut s = TcpStream::connect(("127.0.0.1", c.port())).await.unwrap();
    let seen = outcome(
        &mut s,
        &[
            coded(GSS, b""),
            coded(SSL, b""),
            startup_message(&[("user", "x")]),
        ],
    )
    .await;
    assert_eq!(seen, ["N", "N", "R 10"]);
    let mut s = TcpStream::connect(("127.0.0.1", c.port())).await.unwrap();
    let seen = outcome(&mut s, &[coded(SSL, b""), coded(GSS, b""), coded(GSS, b"")]).await;
    assert_eq!(
        seen,
        [
            "N",
            "N",
            "E 0A000 unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0",
            "closed"
        ]
    );
}

/// Logs in to PostgreSQL over its Unix socket (trusted) with `params`
/// added; the session's value of each of `show`.
async fn pg_settings(dir: &str, port: u16, params: &[(&str, &str)], show: &[&str]) -> Vec<String> {
    let mut s = UnixStream::connect(format!("{dir}/.s.PGSQL.{port}"))
        .await
        .unwrap();
    let mut all = vec![("user", "postgres")];
    all.extend_from_slice(params);
    s.write_all(&startup_message(&all)).await.unwrap();
    let mut out = Vec::new();
    let mut queries = show.iter();
    loop {
        let tag = s.read_u8().await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0; len as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        match tag {
            b'E' => panic!("PostgreSQL refused: {}", field(&body, b'M')),
            b'D' => out.push(String::from_utf8(body[6..].to_vec()).unwrap()),
            b'Z' => match queries.next() {
                Some(name) => {
                    let q = format!("SHOW {name}\0");
                    let mut m = vec![b'Q'];
                    m.extend_from_slice(&((q.len() + 4) as i32).to_be_bytes());
                    m.extend_from_slice(q.as_bytes());
                    s.write_all(&m).await.unwrap();
                }
                None => return out,
            },
            _ => {}
        }
    }
}

async fn proxy_settings(port: u16, params: &[(&str, &str)], show: &[&str]) -> Vec<String> {
    let mut c = RawClient::login_with(port, params).await;
    let mut out = Vec::new();
    for name in show {
        let r = c.query(&format!("SHOW {name}")).await;
        assert!(
            r.error_codes().is_empty(),
            "SHOW {name}: {:?}",
            r.error_codes()
        );
        let (_, body) = r.messages.iter().find(|(t, _)| *t == b'D').unwrap();
        out.push(String::from_utf8(body[6..].to_vec()).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_apply_in_postgresqls_order() {
    let c = Cluster::start(1).await;
    let dir = std::env::temp_dir();
    let dir = dir.to_str().unwrap();
    let pg = Servers::start_with(1, &[("unix_socket_directories", &format!("'{dir}'"))]);
    let port = pg.servers[0].port;
    // Names differing only in case are one setting, the later one wins;
    // `options` applies before every other parameter wherever it stands.
    let params = [
        ("DateStyle", "SQL, MDY"),
        ("application_name", "first"),
        ("datestyle", "German"),
        (
            "options",
            "-c application_name=from_options -c work_mem=1MB",
        ),
        ("application_name", "second"),
        ("extra_float_digits", "1"),
    ];
    let show = [
        "DateStyle",
        "application_name",
        "work_mem",
        "extra_float_digits",
    ];
    let want = pg_settings(dir, port, &params, &show).await;
    let got = proxy_settings(c.port(), &params, &show).await;
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_that_are_not_utf8_are_refused_by_name() {
    let c = Cluster::start(1).await;
    let mut s = TcpStream::connect(("127.0.0.1", c.port())).await.unwrap();
    let packet = coded(
        196608,
        b"user\0plain\0database\0app\0application_name\0caf\xe9\0\0",
    );
    let seen = outcome(&mut s, &[packet]).await;
    assert_eq!(
        seen,
        vec![
            "E 22021 invalid byte sequence for encoding \"UTF8\" in startup parameter \"application_name\"".to_string(),
            "closed".into()
        ]
    );
}

/// A client message: tag, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Logs in as `user` and answers the authentication request with `answer`;
/// what the server then sent, up to its closing the connection.
async fn answered(port: u16, user: &str, answer: &[u8]) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let first = outcome(
        &mut s,
        &[startup_message(&[("user", user), ("database", "app")])],
    )
    .await;
    s.write_all(answer).await.unwrap();
    let mut seen = vec![first.join(" ")];
    seen.extend(outcome(&mut s, &[]).await);
    let quoted = format!("\"{user}\"");
    seen.iter().map(|m| m.replace(&quoted, "\"U\"")).collect()
}

fn sasl_initial(mechanism: &str, len: i32, data: &[u8]) -> Vec<u8> {
    let mut b = mechanism.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(data);
    message(b'p', &b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_messages_are_read_as_postgresql_reads_them() {
    let c = Cluster::start(1).await;
    // PostgreSQL asks `postgres` for a cleartext password and everyone else
    // (a role that does not exist, here) for SCRAM; the proxy asks `plain`
    // and `ghost` the same.
    let hba = std::env::temp_dir().join(format!("pieskieo-hba-{}", std::process::id()));
    std::fs::write(
        &hba,
        "host all postgres 127.0.0.1/32 password\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let pg = Servers::start_with_files(1, &[], &[("pg_hba.conf", &hba)]);
    let _ = std::fs::remove_file(&hba);
    let pg = pg.servers[0].port;
    let first = b"n,,n=,r=abcdefghijklmnopqrstuvwx";
    // PostgreSQL's limit counts the length word: 65,531 bytes of body.
    let long = [vec![b'x'; 65_530], vec![0]].concat();
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        (
            "bytes after the password",
            true,
            message(b'p', b"secret\0junk"),
        ),
        ("a password without its NUL", true, message(b'p', b"secret")),
        ("an empty password", true, message(b'p', b"\0")),
        ("a password as long as allowed", true, message(b'p', &long)),
        ("a password too long", true, message(b'p', &[b'x'; 65_532])),
        (
            "a query instead of a password",
            true,
            message(b'Q', b"SELECT 1\0"),
        ),
        (
            "SCRAM: a whole first message",
            false,
            sasl_initial("SCRAM-SHA-256", first.len() as i32, first),
        ),
        (
            "SCRAM: bytes after the first message",
            false,
            sasl_initial("SCRAM-SHA-256", first.len() as i32 - 3, first),
        ),
        (
            "SCRAM: a first message cut short",
            false,
            sasl_initial("SCRAM-SHA-256", 200, first),
        ),
        (
            "SCRAM: no length",
            false,
            message(b'p', b"SCRAM-SHA-256\0\0\0"),
        ),
        (
            "SCRAM: a mechanism without its NUL",
            false,
            message(b'p', b"SCRAM-SHA-256"),
        ),
        (
            "SCRAM: another mechanism",
            false,
            sasl_initial("SCRAM-SHA-1", first.len() as i32, first),
        ),
        (
            "SCRAM: a query instead",
            false,
            message(b'Q', b"SELECT 1\0"),
        ),
        (
            "SCRAM: a first message too long",
            false,
            sasl_initial("SCRAM-SHA-256", 65_600, &[b'x'; 65_600]),
        ),
        (
            "SCRAM: a mechanism not offered, with nothing after it",
            false,
            message(b'p', b"FOO\0"),
        ),
        (
            "SCRAM: a query claiming a huge length",
            false,
            [&b"Q"[..], &100_000i32.to_be_bytes()].concat(),
        ),
        (
            "a query claiming a huge length instead of a password",
            true,
            [&b"Q"[..], &100_000i32.to_be_bytes()].concat(),
        ),
        (
            "a password that is not UTF-8",
            true,
            message(b'p', b"caf\xe9\0"),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, cleartext, answer) in &cases {
        let (pg_user, proxy_user) = if *cleartext {
            ("postgres", "plain")
        } else {
            ("ghost", "ghost")
        };
        let want = answered(pg, pg_user, answer).await;
        let got = answered(c.port(), proxy_user, answer).await;
        if want != got {
            wrong.push(format!(
                "{what}:\n  PostgreSQL {want:?}\n  Pieskieo   {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Logs in with `params` added and reads up to the first ReadyForQuery or
/// error: the error's SQLSTATE and text, or "ready". PostgreSQL is reached
/// on its Unix socket (trusted), the proxy as the cleartext user `plain`.
async fn login_outcome<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    user: &str,
    params: &[(&str, &str)],
) -> String {
    let mut all = vec![("user", user), ("database", "app")];
    if user == "postgres" {
        all[1].1 = "postgres";
    }
    all.extend_from_slice(params);
    s.write_all(&startup_message(&all)).await.unwrap();
    loop {
        let tag = s.read_u8().await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0; len as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        match tag {
            b'E' => return format!("{} {}", field(&body, b'C'), field(&body, b'M')),
            b'Z' => return "ready".into(),
            b'R' if body[..4] == 3i32.to_be_bytes() => {
                s.write_all(&message(b'p', b"plainpass\0")).await.unwrap()
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_a_shard_refuses_at_startup_fail_as_in_postgresql() {
    let c = Cluster::start(1).await;
    let dir = std::env::temp_dir();
    let dir = dir.to_str().unwrap();
    let pg = Servers::start_with(1, &[("unix_socket_directories", &format!("'{dir}'"))]);
    let socket = format!("{dir}/.s.PGSQL.{}", pg.servers[0].port);
    let cases: [&[(&str, &str)]; 6] = [
        &[("no_such_setting", "x")],
        &[("work_mem", "zzz")],
        &[("is_superuser", "on")],
        &[("options", "-c work_mem")],
        &[("options", "\\")],
        &[("options", "-c\x0bwork_mem=64kB")],
    ];
    let mut wrong = Vec::new();
    for params in cases {
        let mut a = UnixStream::connect(&socket).await.unwrap();
        let want = login_outcome(&mut a, "postgres", params).await;
        let mut b = TcpStream::connect(("127.0.0.1", c.port())).await.unwrap();
        let got = login_outcome(&mut b, "plain", params).await;
        if want != got {
            wrong.push(format!(
                "{params:?}:\n  PostgreSQL {want}\n  Pieskieo   {got}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_2_clients_get_postgresqls_old_style_error() {
    let c = Cluster::start(1).await;
    let pg = Servers::start(1);
    let packet = coded(2 << 16, b"user\0postgres\0\0");
    let mut answers = Vec::new();
    for port in [pg.servers[0].port, c.port()] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&packet).await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .unwrap()
            .unwrap();
        answers.push(String::from_utf8_lossy(&all).into_owned());
    }
    assert_eq!(answers[1], answers[0]);
    assert!(answers[0].starts_with("EFATAL:  unsupported frontend protocol 2.0"));
}

//! The admin console: `SHOW ...` commands and `RELOAD`, answered by the
//! proxy itself over the simple query protocol.

use super::*;

/// The admin console: `SHOW ...` commands answered by the proxy itself.
pub(super) async fn admin_console(
    mut reader: BufReader<ClientRead>,
    mut out: BufWriter<ClientWrite>,
    shared: &Shared,
    pid: i32,
) {
    let mut hello = vec![protocol::authentication(
        pgwire::messages::startup::Authentication::Ok,
    )];
    for (k, v) in [
        ("server_version", "15.0 (Pieskieo admin)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        hello.push(protocol::parameter_status(k, v));
    }
    hello.push(protocol::backend_key_data(pid, 0));
    hello.push(bytes::Bytes::copy_from_slice(protocol::ready_for_query(
        b'I',
    )));
    for m in hello {
        if out.write_all(&m).await.is_err() {
            return;
        }
    }
    loop {
        if out.flush().await.is_err() {
            return;
        }
        let f = match read_frame(&mut reader, 1 << 20).await {
            Ok(f) => f,
            Err(_) => return,
        };
        let mut replies = Vec::new();
        match f.tag {
            b'Q' => {
                let text = String::from_utf8_lossy(f.body().strip_suffix(&[0]).unwrap_or(f.body()))
                    .into_owned();
                let stmts = router::split_statements(&text);
                if stmts.is_empty() {
                    replies.push(protocol::empty_query_response());
                }
                for stmt in stmts {
                    let msg = match crate::admin::answer(stmt, shared) {
                        a @ crate::admin::Answer::Rows { .. } => {
                            replies.extend(a.encode());
                            continue;
                        }
                        crate::admin::Answer::Failed(msg) => msg,
                        crate::admin::Answer::Unknown(cmd) => format!(
                            "unknown admin command \"{cmd}\"; try RELOAD or SHOW SHARDS, POOLS, CLIENTS, TRANSACTIONS, STATS, CONFIG, VERSION"
                        ),
                    };
                    let e = Error::Unsupported(msg);
                    replies.push(protocol::error_response(
                        Severity::Error,
                        e.sqlstate(),
                        &e.to_string(),
                        None,
                    ));
                    break;
                }
                replies.push(bytes::Bytes::copy_from_slice(protocol::ready_for_query(
                    b'I',
                )));
            }
            b'X' => return,
            b'S' => replies.push(bytes::Bytes::copy_from_slice(protocol::ready_for_query(
                b'I',
            ))),
            _ => {
                let e = Error::Unsupported(
                    "the admin console speaks the simple query protocol only".into(),
                );
                replies.push(protocol::error_response(
                    Severity::Error,
                    e.sqlstate(),
                    &e.to_string(),
                    None,
                ));
            }
        }
        for r in replies {
            if out.write_all(&r).await.is_err() {
                return;
            }
        }
    }
}

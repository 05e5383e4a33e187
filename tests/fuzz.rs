//! A short fuzzing run of every target in `pieskieo::fuzz` on stable Rust:
//! seeds of valid input, mutated (bit flips, byte and block insertions,
//! deletions, splices, length-field tampering) for `FUZZ_SECONDS` per target
//! (default 2). A panic fails the test and prints the input in hex, to be
//! kept as a regression seed below. Long runs: `cargo fuzz` in `fuzz/`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(r: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + r.below(4) {
        let len = input.len();
        match r.below(8) {
            0 if len > 0 => {
                let i = r.below(len);
                input[i] ^= 1 << r.below(8);
            }
            1 => {
                let i = r.below(len + 1);
                input.insert(i, r.next() as u8);
            }
            2 if len > 0 => {
                let i = r.below(len);
                let n = r.below(len - i + 1).min(16);
                input.drain(i..i + n);
            }
            3 => {
                // Splice in a piece of another seed.
                let other = &seeds[r.below(seeds.len())];
                if !other.is_empty() {
                    let a = r.below(other.len());
                    let b = a + r.below(other.len() - a + 1);
                    let at = r.below(len + 1);
                    input.splice(at..at, other[a..b].iter().copied());
                }
            }
            4 if len >= 4 => {
                // Tamper with what may be a length field.
                let i = r.below(len - 3);
                let v: [u8; 4] = match r.below(4) {
                    0 => [0x7f, 0xff, 0xff, 0xff],
                    1 => [0xff, 0xff, 0xff, 0xff],
                    2 => [0, 0, 0, 0],
                    _ => (r.next() as u32).to_be_bytes(),
                };
                input[i..i + 4].copy_from_slice(&v);
            }
            5 if len > 0 => {
                let i = r.below(len);
                input[i] = [0, 0xff, b'\'', b'"', b'$', b';', b'(', b'\\'][r.below(8)];
            }
            6 => input.truncate(r.below(len + 1)),
            _ => {
                let i = r.below(len + 1);
                let n = 1 + r.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
                input.splice(i..i, bytes);
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `target` on the seeds, then on mutations of them until the time is up.
fn run(name: &str, seeds: Vec<Vec<u8>>, target: fn(&[u8])) {
    let secs: f64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    let mut runs = 0u64;
    let call = |input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            panic!("fuzz target {name} panicked on input {}", hex(input));
        }
    };
    for s in &seeds {
        call(s);
        runs += 1;
    }
    while Instant::now() < deadline {
        let mut input = seeds[r.below(seeds.len())].clone();
        mutate(&mut r, &seeds, &mut input);
        call(&input);
        runs += 1;
    }
    println!("{name}: {runs} inputs, no panic");
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup_packet(code: i32, body: &[u8]) -> Vec<u8> {
    let mut m = ((body.len() + 8) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[test]
fn fuzz_startup_packet() {
    let params = b"user\0app\0database\0app\0application_name\0x\0\0";
    run(
        "startup",
        vec![
            startup_packet(196608, params),
            [
                startup_packet(80877103, b""),
                startup_packet(196608, params),
            ]
            .concat(),
            startup_packet(80877102, &[0, 0, 0, 7, 0, 0, 0, 9]),
            startup_packet(80877104, b""),
            startup_packet(196608, b"user\0"),
        ],
        pieskieo::fuzz::startup,
    );
}

#[test]
fn fuzz_client_messages() {
    let bind = {
        let mut b = b"portal\0stmt\0".to_vec();
        b.extend_from_slice(&[0, 2, 0, 0, 0, 1, 0, 2, 0, 0, 0, 1, b'7', 0, 0, 0, 8]);
        b.extend_from_slice(&42i64.to_be_bytes());
        b.extend_from_slice(&[0, 1, 0, 1]);
        b
    };
    run(
        "client_messages",
        vec![
            msg(
                b'P',
                b"s1\0SELECT * FROM accounts WHERE id = $1\0\0\x01\0\0\0\x14",
            ),
            msg(b'B', &bind),
            [
                msg(b'D', b"Ps1\0"),
                msg(b'E', b"\0\0\0\0\0"),
                msg(b'S', b""),
            ]
            .concat(),
            msg(b'Q', b"SELECT 1\0"),
            msg(b'E', b"SERROR\0C42601\0Mboom\0\0"),
        ],
        pieskieo::fuzz::client_messages,
    );
}

#[test]
fn fuzz_router() {
    let sql = [
        "SELECT * FROM accounts WHERE id = 7",
        "SELECT email, count(*), avg(id) FROM users u JOIN accounts a ON a.id = u.id WHERE a.id IN (1, 2) GROUP BY 1 HAVING count(*) > 1 ORDER BY 2 DESC LIMIT 5 OFFSET 1",
        "INSERT INTO accounts (id, note) VALUES (1, 'a''b'), ($2, E'\\x'), (-3, $$d$$)",
        "UPDATE accounts SET note = 'x' WHERE id = $1; DELETE FROM users WHERE email = 'q'",
        "BEGIN; SAVEPOINT a; SET LOCAL x = 1; ROLLBACK TO a; PREPARE p (int) AS SELECT $1; EXECUTE p (1); COMMIT",
        "PREVIEW SELECT DISTINCT code FROM regions WHERE code < 50 ORDER BY code NULLS FIRST",
        "WITH x AS (SELECT 1) SELECT * FROM x, accounts /* c */ -- d\n WHERE id = 1",
        "SELECT \"weird \"\"name\", 'unterminated FROM accounts",
    ];
    run(
        "router",
        sql.iter().map(|s| s.as_bytes().to_vec()).collect(),
        pieskieo::fuzz::router,
    );
}

#[test]
fn fuzz_gid() {
    let seeds = [
        "pieskieo_main_0123456789abcdef0011223344556677_2_0",
        "pieskieo_main__2_0",
        "pieskieo_other_0123456789abcdef0011223344556677_1_0",
        "pieskieo_main_0123456789abcdef00112233445566_1_0",
        "pieskieo_main_g123456789abcdef0011223344556677_1_0",
        "",
    ];
    run(
        "gid",
        seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
        pieskieo::fuzz::gid,
    );
}

#[test]
fn fuzz_config() {
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/pieskieo.toml"))
        .expect("example config");
    run(
        "config",
        vec![
            text,
            b"node_id = \"n\"\n[[users]]\nname = \"u\"\npassword = \"p\"\n[[shards]]\nid = 0\nport = 1\ndatabase = \"d\"\nuser = \"u\"\n".to_vec(),
        ],
        pieskieo::fuzz::config,
    );
}

#[test]
fn fuzz_merge_description() {
    let field = |name: &str, oid: u32| {
        let mut f = name.as_bytes().to_vec();
        f.push(0);
        f.extend_from_slice(&0i32.to_be_bytes());
        f.extend_from_slice(&0i16.to_be_bytes());
        f.extend_from_slice(&oid.to_be_bytes());
        f.extend_from_slice(&(-1i16).to_be_bytes());
        f.extend_from_slice(&(-1i32).to_be_bytes());
        f.extend_from_slice(&0i16.to_be_bytes());
        f
    };
    let desc = |fields: &[(&str, u32)]| {
        let mut d = (fields.len() as i16).to_be_bytes().to_vec();
        for (n, o) in fields {
            d.extend_from_slice(&field(n, *o));
        }
        d
    };
    run(
        "merge_description",
        vec![
            desc(&[("id", 20), ("balance", 1700), ("pieskieo_sort_1", 1700)]),
            desc(&[
                ("balance", 20),
                ("count", 20),
                ("avg", 1700),
                ("pieskieo_count", 20),
                ("min", 25),
                ("sum", 1700),
            ]),
        ],
        pieskieo::fuzz::merge_description,
    );
}

//! Pieskieo's hash sharding must pick the partition PostgreSQL's own
//! `PARTITION BY HASH` picks, for every supported key type.

use pieskieo::config::Config;
use pieskieo::router::{KeyType, KeyValue, ShardMap};

use crate::harness::{config_text, Servers};

const KEYS: usize = 10_000;

fn random_text() -> String {
    const ALPHABET: &[&str] = &[
        "a", "Z", "0", " ", "'", "\\", "$", "ą", "ż", "ж", "漢", "字", "é", "🦀", "\u{0301}", "-",
        "_",
    ];
    let len = rand::random::<u32>() as usize % 40;
    (0..len)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()])
        .collect()
}

fn keys(ty: KeyType) -> Vec<String> {
    let mut v: Vec<String> = match ty {
        KeyType::Int2 => vec![
            i16::MIN.to_string(),
            i16::MAX.to_string(),
            "0".into(),
            "-1".into(),
        ],
        KeyType::Int4 => vec![
            i32::MIN.to_string(),
            i32::MAX.to_string(),
            "0".into(),
            "-1".into(),
        ],
        KeyType::Int8 => vec![
            i64::MIN.to_string(),
            i64::MAX.to_string(),
            "0".into(),
            "-1".into(),
            "4294967296".into(),
        ],
        KeyType::Text => vec![
            String::new(),
            "a".into(),
            "ab".into(),
            "abcdefghijkl".into(),
            "abcdefghijklm".into(),
        ],
        KeyType::Uuid => vec!["00000000-0000-0000-0000-000000000000".into()],
    };
    while v.len() < KEYS {
        v.push(match ty {
            KeyType::Int2 => (rand::random::<i16>()).to_string(),
            KeyType::Int4 => {
                // Half small (dense, like real ids), half anywhere.
                if rand::random::<bool>() {
                    (rand::random::<i32>() % 100_000).to_string()
                } else {
                    rand::random::<i32>().to_string()
                }
            }
            KeyType::Int8 => {
                if rand::random::<bool>() {
                    (rand::random::<i64>() % 1_000_000).to_string()
                } else {
                    rand::random::<i64>().to_string()
                }
            }
            KeyType::Text => random_text(),
            KeyType::Uuid => KeyValue::Uuid(rand::random()).to_string(),
        });
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_sharding_matches_postgres_hash_partitioning() {
    let servers = Servers::start(1);
    let pg = servers.connect(0).await;
    for modulus in [3u32, 5] {
        for (ty, name) in [
            (KeyType::Int2, "int2"),
            (KeyType::Int4, "int4"),
            (KeyType::Int8, "int8"),
            (KeyType::Text, "text"),
            (KeyType::Uuid, "uuid"),
        ] {
            let table = format!("p_{name}_{modulus}");
            pg.batch_execute(&format!(
                "CREATE TABLE {table} (k {name}) PARTITION BY HASH (k)"
            ))
            .await
            .unwrap();
            for r in 0..modulus {
                pg.batch_execute(&format!(
                    "CREATE TABLE {table}_{r} PARTITION OF {table} FOR VALUES WITH (MODULUS {modulus}, REMAINDER {r})"
                ))
                .await
                .unwrap();
            }
            let ks = keys(ty);
            pg.execute(
                &format!("INSERT INTO {table} SELECT unnest($1::text[])::{name}"),
                &[&ks],
            )
            .await
            .unwrap();

            // The router's view of a table with that key type over `modulus` shards.
            let ports: Vec<u16> = (1..=modulus as u16).collect();
            let tables = format!("[[tables]]\nname = \"t\"\nkey = \"k\"\nkey_type = \"{name}\"\n");
            let cfg = Config::parse(&config_text(&ports, &tables), "t.toml").unwrap();
            let map = ShardMap::from_config(&cfg);
            let rule = &map.tables["t"];

            let rows = pg
                .query(
                    &format!("SELECT k::text, tableoid::regclass::text FROM {table}"),
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(rows.len(), KEYS);
            let mut per_shard = vec![0usize; modulus as usize];
            for row in rows {
                let k: String = row.get(0);
                let part: String = row.get(1);
                let expected: u32 = part.rsplit('_').next().unwrap().parse().unwrap();
                let key = KeyValue::parse(ty, &k).unwrap();
                let got = rule.shard_for(&key, modulus).unwrap().0;
                assert_eq!(got, expected, "{name} key {k:?} modulus {modulus}");
                per_shard[got as usize] += 1;
            }
            assert!(
                per_shard.iter().all(|&n| n > 0),
                "{name}: every shard gets keys: {per_shard:?}"
            );
        }
    }
}

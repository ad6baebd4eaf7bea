//! One conformance suite for the `Store` trait, run on SQLite (a file in a temp dir) and on
//! PostgreSQL (a database of its own on the test server, see `estuary_store::test_support`).
//! Every test opens two handles on the same database, as two server nodes would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use estuary_store::test_support::TestDatabase;
use estuary_store::{
    AuditRecord, CertificateFilter, CertificateRecord, CrlSigner, DatabaseUrl, NewRequest,
    OpenMode, Outcome, RequestStatus, RevocationOutcome, Store, StoreError,
};

/// Two handles ("nodes") on one fresh database, and what keeps it alive.
struct Nodes {
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    url: DatabaseUrl,
    _keep: Box<dyn std::any::Any + Send>,
}

async fn sqlite() -> Nodes {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("estuary.db"));
    let a = estuary_store::open(&url, OpenMode::CreateOrUpgrade)
        .await
        .unwrap();
    let b = estuary_store::open(&url, OpenMode::CreateOrUpgrade)
        .await
        .unwrap();
    Nodes {
        a,
        b,
        url,
        _keep: Box::new(dir),
    }
}

async fn postgres(tag: &str) -> Nodes {
    let db = TestDatabase::create(tag).await;
    let url = db.database_url();
    // Both start together: the schema lock makes one create it and the other wait.
    let (a, b) = tokio::join!(
        estuary_store::open(&url, OpenMode::CreateOrUpgrade),
        estuary_store::open(&url, OpenMode::CreateOrUpgrade)
    );
    Nodes {
        a: a.unwrap(),
        b: b.unwrap(),
        url,
        _keep: Box::new(db),
    }
}

/// Runs a conformance test on both stores.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite().await).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::postgres(stringify!($name)).await).await;
                }
            )*
        }
    };
}

conformance!(
    records_read_back_from_either_node,
    concurrent_writers_on_two_nodes_all_commit,
    a_serial_collision_fails_alone,
    an_approval_is_issued_once_across_nodes,
    requests_are_shared_and_capped,
    revocation_is_seen_by_the_other_node,
    crls_have_one_number_sequence_and_one_signer_at_a_time,
    audit_is_listed_and_pruned,
    commands_refuse_a_store_without_this_schema,
    a_store_is_bound_to_one_ca_key,
);

fn serial(n: u32) -> String {
    format!("{:012x}{:020x}", 0x0190_0000_0000u64 + u64::from(n), n)
}

fn cert(serial: &str, subject: &str, not_after: i64) -> CertificateRecord {
    use std::fmt::Write as _;
    let mut sha256 = String::new();
    let mut sha1 = String::new();
    for i in 0..32u8 {
        let _ = write!(
            sha256,
            "{:02X}",
            serial.as_bytes()[usize::from(i) % serial.len()] ^ i
        );
    }
    for i in 0..20u8 {
        let _ = write!(
            sha1,
            "{:02X}",
            serial.as_bytes()[usize::from(i) % serial.len()] ^ (i + 7)
        );
    }
    CertificateRecord {
        serial: serial.into(),
        subject: subject.into(),
        sans: vec!["DNS:a.example".into(), "IP:127.0.0.1".into()],
        not_before: 100,
        not_after,
        sha256_thumbprint: sha256,
        sha1_thumbprint: sha1,
        profile: "device".into(),
        label: "sensors".into(),
        origin_label: "sensors".into(),
        requester: "basic:estuser".into(),
        key_type: "p256".into(),
        issued_at: 1_000,
        revoked_at: None,
        der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
    }
}

fn audit(outcome: Outcome, time: i64) -> AuditRecord {
    AuditRecord {
        time,
        request_id: "r1".into(),
        peer: "127.0.0.1:1".into(),
        requester: "basic:estuser".into(),
        auth_method: "basic".into(),
        label: String::new(),
        operation: "simpleenroll".into(),
        outcome,
        status: 200,
        serial: None,
        reason: None,
    }
}

fn far_future() -> i64 {
    i64::from(u32::MAX)
}

async fn records_read_back_from_either_node(n: Nodes) {
    let first = cert(&serial(1), "CN=device-1,O=Example", far_future());
    let mut second = cert(&serial(2), "CN=device-2,O=Example", 5_000);
    second.issued_at = 2_000;
    n.a.record_issued(first.clone(), audit(Outcome::Issued, 10), None)
        .await
        .unwrap();
    n.b.record_issued(second.clone(), audit(Outcome::Issued, 11), None)
        .await
        .unwrap();
    for store in [&n.a, &n.b] {
        assert_eq!(
            store.certificate_by_serial(&first.serial).await.unwrap(),
            Some(first.clone())
        );
        assert_eq!(
            store
                .find_certificate(&first.sha256_thumbprint.to_ascii_lowercase())
                .await
                .unwrap(),
            Some(first.clone())
        );
        assert_eq!(
            store
                .find_certificate(&first.sha1_thumbprint)
                .await
                .unwrap(),
            Some(first.clone())
        );
        assert_eq!(
            store
                .find_certificate(&first.serial.to_ascii_uppercase())
                .await
                .unwrap(),
            Some(first.clone())
        );
        assert_eq!(store.find_certificate("00ff").await.unwrap(), None);
        assert_eq!(store.is_revoked(&first.serial).await.unwrap(), Some(false));
        assert_eq!(store.is_revoked("00ff").await.unwrap(), None);
        let status = store
            .certificate_status(&first.serial)
            .await
            .unwrap()
            .unwrap();
        assert!(!status.revoked);
        assert_eq!(
            (status.label.as_str(), status.profile.as_str()),
            ("sensors", "device")
        );
        // Newest first; expiring soonest first; subject filter; limit.
        let all = store
            .list_certificates(&CertificateFilter::default())
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|c| c.serial.clone()).collect::<Vec<_>>(),
            vec![second.serial.clone(), first.serial.clone()]
        );
        let expiring = store
            .list_certificates(&CertificateFilter {
                expiring_before: Some(6_000),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(expiring, vec![second.clone()]);
        let named = store
            .list_certificates(&CertificateFilter {
                subject_contains: Some("DEVICE-1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(named, vec![first.clone()]);
        let valid = store
            .list_certificates(&CertificateFilter {
                valid_at: Some(6_000),
                limit: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(valid, vec![first.clone()]);
        store.ping().await.unwrap();
    }
}

async fn concurrent_writers_on_two_nodes_all_commit(n: Nodes) {
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let store = if i % 2 == 0 { n.a.clone() } else { n.b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .record_issued(
                    cert(&serial(i), &format!("CN=d{i}"), far_future()),
                    audit(Outcome::Issued, 10),
                    None,
                )
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let all =
        n.b.list_certificates(&CertificateFilter::default())
            .await
            .unwrap();
    assert_eq!(all.len(), 200);
    assert_eq!(n.a.list_audit(0, 1_000).await.unwrap().len(), 200);
}

async fn a_serial_collision_fails_alone(n: Nodes) {
    n.a.record_issued(
        cert(&serial(7), "CN=first", far_future()),
        audit(Outcome::Issued, 10),
        None,
    )
    .await
    .unwrap();
    // The same serial from the other node, beside a good one.
    let (dup, other) = tokio::join!(
        n.b.record_issued(
            cert(&serial(7), "CN=second", far_future()),
            audit(Outcome::Issued, 10),
            None
        ),
        n.a.record_issued(
            cert(&serial(8), "CN=third", far_future()),
            audit(Outcome::Issued, 10),
            None
        ),
    );
    assert!(
        matches!(&dup, Err(StoreError::DuplicateSerial(s)) if *s == serial(7)),
        "{dup:?}"
    );
    other.unwrap();
    let kept =
        n.a.certificate_by_serial(&serial(7))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(kept.subject, "CN=first");
    // The failed one left no audit event behind.
    assert_eq!(n.a.list_audit(0, 100).await.unwrap().len(), 2);
}

fn new_request(csr: &str, requester: &str) -> NewRequest {
    NewRequest {
        csr_sha256: csr.into(),
        csr: vec![1, 2, 3],
        subject: "CN=waiting".into(),
        label: "approved".into(),
        operation: "simpleenroll".into(),
        requester: requester.into(),
        peer: "127.0.0.1:9".into(),
        peer_key: "127.0.0.1".into(),
        key_sha256: format!("key-{csr}"),
        created_at: 50,
    }
}

async fn an_approval_is_issued_once_across_nodes(n: Nodes) {
    // Made on node B, approved on node A.
    let request =
        n.b.create_request(new_request("aa11", "basic:dev"))
            .await
            .unwrap();
    assert_eq!(request.status, RequestStatus::Pending);
    assert!(n
        .a
        .decide_request(request.id, true, None, "cli:op")
        .await
        .unwrap());
    assert!(
        !n.a.decide_request(request.id, true, None, "cli:op")
            .await
            .unwrap(),
        "decided twice"
    );
    let seen = n.b.get_request(request.id).await.unwrap().unwrap();
    assert_eq!(
        (seen.status, seen.decided_by.as_deref()),
        (RequestStatus::Approved, Some("cli:op"))
    );
    // Both nodes issue for it at once (the device retried through the load balancer).
    let (x, y) = tokio::join!(
        n.a.record_issued(
            cert(&serial(20), "CN=waiting", far_future()),
            audit(Outcome::Issued, 10),
            Some(request.id)
        ),
        n.b.record_issued(
            cert(&serial(21), "CN=waiting", far_future()),
            audit(Outcome::Issued, 10),
            Some(request.id)
        ),
    );
    let results = [x, y];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(StoreError::RequestNotApproved(id)) if *id == request.id)));
    let done = n.a.get_request(request.id).await.unwrap().unwrap();
    assert_eq!(done.status, RequestStatus::Issued);
    let issued = done.serial.unwrap();
    assert!(n.a.certificate_by_serial(&issued).await.unwrap().is_some());
    let loser = if issued == serial(20) {
        serial(21)
    } else {
        serial(20)
    };
    assert_eq!(
        n.a.certificate_by_serial(&loser).await.unwrap(),
        None,
        "the losing certificate was rolled back"
    );
}

async fn requests_are_shared_and_capped(n: Nodes) {
    let first =
        n.a.create_request(new_request("bb01", "basic:dev"))
            .await
            .unwrap();
    let again =
        n.b.create_request(new_request("bb01", "basic:dev"))
            .await
            .unwrap();
    assert_eq!(
        first.id, again.id,
        "the same CSR is the same request on any node"
    );
    n.b.create_request(new_request("bb02", "basic:other"))
        .await
        .unwrap();
    assert_eq!(n.a.pending_count("basic:dev").await.unwrap(), 1);
    let counts =
        n.b.pending_counts("basic:dev", "127.0.0.1", "key-bb01")
            .await
            .unwrap();
    assert_eq!(
        (counts.by_requester, counts.by_address, counts.by_key),
        (1, 2, 1)
    );
    assert_eq!(
        n.a.find_request("bb01").await.unwrap().map(|r| r.id),
        Some(first.id)
    );
    assert!(n
        .a
        .decide_request(first.id, false, Some("not ours".into()), "cli:op")
        .await
        .unwrap());
    n.b.retire_request(first.id).await.unwrap();
    assert_eq!(n.a.find_request("bb01").await.unwrap(), None);
    let rejected =
        n.a.list_requests(Some(RequestStatus::Rejected))
            .await
            .unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason.as_deref(), Some("not ours"));
    assert_eq!(n.b.list_requests(None).await.unwrap().len(), 2);
    // The CSR may be sent again after a rejection: a new request.
    let fresh =
        n.b.create_request(new_request("bb01", "basic:dev"))
            .await
            .unwrap();
    assert_ne!(fresh.id, first.id);
}

async fn revocation_is_seen_by_the_other_node(n: Nodes) {
    let live = cert(&serial(30), "CN=live", far_future());
    let expired = cert(&serial(31), "CN=expired", 200);
    for c in [&live, &expired] {
        n.a.record_issued(c.clone(), audit(Outcome::Issued, 10), None)
            .await
            .unwrap();
    }
    let before = n.b.revocation_version().await.unwrap();
    let outcome =
        n.a.revoke(
            &live.sha256_thumbprint,
            Some("keyCompromise".into()),
            audit(Outcome::Revoked, 20),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RevocationOutcome::Revoked {
            serial: live.serial.clone(),
            subject: "CN=live".into()
        }
    );
    assert!(n.b.revocation_version().await.unwrap() > before);
    assert_eq!(n.b.is_revoked(&live.serial).await.unwrap(), Some(true));
    assert!(
        n.b.certificate_status(&live.serial)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert_eq!(
        n.b.revoke(&live.serial, None, audit(Outcome::Revoked, 21))
            .await
            .unwrap(),
        RevocationOutcome::AlreadyRevoked {
            serial: live.serial.clone()
        }
    );
    assert_eq!(
        n.b.revoke("0badc0de", None, audit(Outcome::Revoked, 21))
            .await
            .unwrap(),
        RevocationOutcome::NotFound
    );
    n.b.revoke(&expired.serial, None, audit(Outcome::Revoked, 22))
        .await
        .unwrap();
    // RFC 5280 §3.3: the expired one is not listed.
    let revoked = n.a.revoked().await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(
        (
            revoked[0].serial.as_str(),
            revoked[0].revoked_at,
            revoked[0].reason.as_deref()
        ),
        (live.serial.as_str(), 20, Some("keyCompromise"))
    );
    let events = n.a.list_audit(0, 100).await.unwrap();
    assert!(events.iter().any(
        |e| e.outcome == Outcome::Revoked && e.serial.as_deref() == Some(live.serial.as_str())
    ));
}

/// A signer that counts its calls and can be made to fail.
fn signer(calls: &Arc<AtomicU32>, fail: bool) -> CrlSigner {
    let calls = calls.clone();
    Box::new(move |number| {
        calls.fetch_add(1, Ordering::SeqCst);
        if fail {
            return Err("token unplugged".into());
        }
        // Long enough that a second signer would overlap if the lock did not hold it off.
        std::thread::sleep(std::time::Duration::from_millis(50));
        Ok((number.to_be_bytes().to_vec(), 1_000, 2_000))
    })
}

async fn crls_have_one_number_sequence_and_one_signer_at_a_time(n: Nodes) {
    let calls = Arc::new(AtomicU32::new(0));
    assert_eq!(n.a.newest_crl("ca-1", 0).await.unwrap(), None);
    // A failing signer records nothing and uses up no number.
    for _ in 0..3 {
        let e =
            n.a.publish_crl("ca-1", 0, 0, signer(&calls, true))
                .await
                .unwrap_err();
        assert!(matches!(e, StoreError::CrlSigning(_)), "{e:?}");
    }
    assert_eq!(n.a.newest_crl("ca-1", 0).await.unwrap(), None);
    // Both nodes want a CRL for revocation version 0 at once: one signs, the other takes it.
    calls.store(0, Ordering::SeqCst);
    let (x, y) = tokio::join!(
        n.a.publish_crl("ca-1", 0, 500, signer(&calls, false)),
        n.b.publish_crl("ca-1", 0, 500, signer(&calls, false)),
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one signer");
    assert_eq!(x, y);
    assert_eq!(x.number, 1);
    // A newer revocation version (or a stale CRL) is signed with the next number.
    let next =
        n.b.publish_crl("ca-1", 1, 500, signer(&calls, false))
            .await
            .unwrap();
    assert_eq!((next.number, next.revocation_version), (2, 1));
    let stale =
        n.a.publish_crl("ca-1", 1, 1_500, signer(&calls, false))
            .await
            .unwrap();
    assert_eq!(stale.number, 3);
    assert_eq!(n.b.newest_crl("ca-1", 0).await.unwrap(), Some(stale));
    // Another CA key has CRLs of its own, numbered in the same sequence.
    assert_eq!(n.a.newest_crl("ca-2", 0).await.unwrap(), None);
    let other =
        n.a.publish_crl("ca-2", 1, 500, signer(&calls, false))
            .await
            .unwrap();
    assert_eq!(other.number, 4);
    assert_eq!(n.b.newest_crl("ca-1", 0).await.unwrap().unwrap().number, 3);
}

async fn audit_is_listed_and_pruned(n: Nodes) {
    for (i, outcome) in [
        Outcome::Denied,
        Outcome::Pending,
        Outcome::Other("from-the-future".into()),
    ]
    .into_iter()
    .enumerate()
    {
        n.a.record_audit(audit(outcome, 10 + i as i64))
            .await
            .unwrap();
    }
    let events = n.b.list_audit(11, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].outcome,
        Outcome::Other("from-the-future".into()),
        "newest first"
    );
    assert_eq!(n.b.prune_audit(12).await.unwrap(), 2);
    assert_eq!(n.a.list_audit(0, 10).await.unwrap().len(), 1);
}

async fn commands_refuse_a_store_without_this_schema(n: Nodes) {
    // The schema exists: a command may open it.
    estuary_store::open(&n.url, OpenMode::Existing)
        .await
        .unwrap();
    if let DatabaseUrl::Postgres(_) = &n.url {
        // An empty database: a command does not create the schema.
        let empty = TestDatabase::create("empty").await;
        let e = estuary_store::open(&empty.database_url(), OpenMode::Existing)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NoSchema(_)), "{e}");
        assert!(!e.to_string().contains("estuary_test:estuary_test"), "{e}");
        // A newer binary's schema is refused by serve, too.
        let store = estuary_store::PostgresStore::connect(
            match &n.url {
                DatabaseUrl::Postgres(url) => url,
                DatabaseUrl::Sqlite(_) => unreachable!(),
            },
            OpenMode::Existing,
        )
        .await
        .unwrap();
        store.set_schema_version_for_tests(99).await.unwrap();
        let e = estuary_store::open(&n.url, OpenMode::CreateOrUpgrade)
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::SchemaTooNew { found: 99, .. }),
            "{e}"
        );
    }
}

/// An unreachable database, a wrong password and TLS to the database, at start.
mod connecting {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_database_is_a_clear_error_without_the_password() {
        let url: DatabaseUrl = "postgres://estuary:hunter2@127.0.0.1:1/estuary?connect_timeout=2"
            .parse()
            .unwrap();
        let e = estuary_store::open(&url, OpenMode::CreateOrUpgrade)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot connect to postgres://estuary:***@127.0.0.1:1/estuary"),
            "{e}"
        );
        assert!(e.to_lowercase().contains("refused"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_password_is_a_clear_error() {
        let db = TestDatabase::create("wrong_password").await;
        let wrong = db.url().replacen(":estuary_test@", ":not-the-password@", 1);
        let e = estuary_store::open(&wrong.parse().unwrap(), OpenMode::CreateOrUpgrade)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("password authentication failed"), "{e}");
        assert!(!e.contains("not-the-password"), "{e}");
    }

    /// Debian's PostgreSQL has TLS on (a snakeoil certificate): `sslmode=require` encrypts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sslmode_require_encrypts_the_connection() {
        let db = TestDatabase::create("tls").await;
        let url = db.url().replace("sslmode=disable", "sslmode=require");
        let store = estuary_store::open(&url.parse().unwrap(), OpenMode::CreateOrUpgrade)
            .await
            .unwrap();
        store.ping().await.unwrap();
        let DatabaseUrl::Postgres(pg) = url.parse::<DatabaseUrl>().unwrap() else {
            unreachable!()
        };
        let store = estuary_store::PostgresStore::connect(&pg, OpenMode::Existing)
            .await
            .unwrap();
        assert!(store.connection_is_encrypted_for_tests().await.unwrap());
    }
}

/// Every commit is flushed before it returns, even where the database's default says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_synchronous_whatever_the_database_default() {
    let db = TestDatabase::create("synchronous").await;
    db.admin_execute("ALTER DATABASE $DATABASE SET synchronous_commit = off")
        .await;
    let DatabaseUrl::Postgres(url) = db.database_url() else {
        unreachable!()
    };
    let store = estuary_store::PostgresStore::connect(&url, OpenMode::CreateOrUpgrade)
        .await
        .unwrap();
    assert_eq!(
        store.setting_for_tests("synchronous_commit").await.unwrap(),
        "on"
    );
}

/// The first node records its CA key; a node of another CA learns the recorded one (and the
/// server refuses to start); a replacement on purpose takes its place.
async fn a_store_is_bound_to_one_ca_key(n: Nodes) {
    let (x, y) = tokio::join!(n.a.bind_ca_key(7, false), n.b.bind_ca_key(7, false));
    assert_eq!((x.unwrap(), y.unwrap()), (7, 7));
    assert_eq!(n.b.bind_ca_key(-9, false).await.unwrap(), 7);
    assert_eq!(n.a.bind_ca_key(7, false).await.unwrap(), 7);
    assert_eq!(n.b.bind_ca_key(-9, true).await.unwrap(), -9);
    assert_eq!(n.a.bind_ca_key(7, false).await.unwrap(), -9);
}

// `estuary store migrate`: a SQLite store copied into a new PostgreSQL database.

/// Everything reads the same from the copy, and the copy goes on where SQLite stopped: the
/// next request id, the next CRL number and the next audit id follow the copied ones.
#[tokio::test]
async fn a_sqlite_store_copied_into_postgresql_reads_the_same_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estuary.db");
    let sqlite_url = DatabaseUrl::Sqlite(path.clone());
    let sqlite = estuary_store::open(&sqlite_url, OpenMode::CreateOrUpgrade)
        .await
        .unwrap();
    for i in 0..3 {
        let mut issued = audit(Outcome::Issued, 10 + i64::from(i));
        issued.serial = Some(serial(i));
        sqlite
            .record_issued(
                cert(&serial(i), &format!("CN=d{i}"), far_future()),
                issued,
                None,
            )
            .await
            .unwrap();
    }
    let revoked = sqlite
        .revoke(
            &serial(1),
            Some("keyCompromise".into()),
            audit(Outcome::Revoked, 20),
        )
        .await
        .unwrap();
    assert!(
        matches!(revoked, RevocationOutcome::Revoked { .. }),
        "{revoked:?}"
    );
    let first = sqlite
        .create_request(new_request("csr-1", "basic:estuser"))
        .await
        .unwrap();
    let second = sqlite
        .create_request(new_request("csr-2", "basic:other"))
        .await
        .unwrap();
    assert!(sqlite
        .decide_request(first.id, true, None, "admin")
        .await
        .unwrap());
    let calls = Arc::new(AtomicU32::new(0));
    sqlite
        .publish_crl("ca-1", 0, 0, signer(&calls, false))
        .await
        .unwrap();
    let version = sqlite.revocation_version().await.unwrap();
    let last_crl = sqlite
        .publish_crl("ca-1", version, 0, signer(&calls, false))
        .await
        .unwrap();
    drop(sqlite);

    let db = TestDatabase::create("migrate").await;
    let DatabaseUrl::Postgres(url) = db.database_url() else {
        unreachable!()
    };
    let mut progress = Vec::new();
    let report = estuary_store::migrate::sqlite_to_postgres(&path, &url, &mut |table, rows| {
        progress.push((table.to_string(), rows))
    })
    .await
    .unwrap();
    assert_eq!(
        (report.certificates, report.requests, report.crls),
        (3, 2, 2)
    );
    assert!(
        progress.contains(&("certificates".to_string(), 3)),
        "{progress:?}"
    );

    let sqlite = estuary_store::open(&sqlite_url, OpenMode::Existing)
        .await
        .unwrap();
    let pg = estuary_store::open(&db.database_url(), OpenMode::Existing)
        .await
        .unwrap();
    for i in 0..3 {
        let record = pg.certificate_by_serial(&serial(i)).await.unwrap();
        assert!(record.is_some());
        assert_eq!(
            record,
            sqlite.certificate_by_serial(&serial(i)).await.unwrap()
        );
        assert_eq!(
            pg.certificate_status(&serial(i)).await.unwrap(),
            sqlite.certificate_status(&serial(i)).await.unwrap()
        );
    }
    // A lookup by thumbprint (the copied thumbprints table).
    let thumbprint = cert(&serial(2), "CN=d2", far_future()).sha256_thumbprint;
    assert_eq!(
        pg.find_certificate(&thumbprint)
            .await
            .unwrap()
            .map(|c| c.serial),
        Some(serial(2))
    );
    assert_eq!(pg.is_revoked(&serial(1)).await.unwrap(), Some(true));
    assert_eq!(pg.revoked().await.unwrap(), sqlite.revoked().await.unwrap());
    assert_eq!(
        pg.list_audit(0, 100).await.unwrap(),
        sqlite.list_audit(0, 100).await.unwrap()
    );
    assert_eq!(
        pg.list_requests(None).await.unwrap(),
        sqlite.list_requests(None).await.unwrap()
    );
    assert_eq!(pg.revocation_version().await.unwrap(), version);
    assert_eq!(
        pg.newest_crl("ca-1", 0).await.unwrap(),
        Some(last_crl.clone())
    );

    // It goes on after the copied ids and numbers.
    let third = pg
        .create_request(new_request("csr-3", "basic:estuser"))
        .await
        .unwrap();
    assert!(third.id > second.id, "{} after {}", third.id, second.id);
    pg.record_audit(audit(Outcome::Denied, 30)).await.unwrap();
    pg.record_issued(
        cert(&serial(9), "CN=d9", far_future()),
        audit(Outcome::Issued, 31),
        None,
    )
    .await
    .unwrap();
    let next = pg
        .publish_crl("ca-1", version + 1, 0, signer(&calls, false))
        .await
        .unwrap();
    assert_eq!(next.number, last_crl.number + 1);
}

/// A store another connection has open (a server idle on it) is not copied: the copy stops
/// with a message instead of missing what that server records later, and the target is
/// untouched.
#[tokio::test]
async fn a_sqlite_store_open_elsewhere_is_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estuary.db");
    let sqlite = estuary_store::open(
        &DatabaseUrl::Sqlite(path.clone()),
        OpenMode::CreateOrUpgrade,
    )
    .await
    .unwrap();
    sqlite
        .record_issued(
            cert(&serial(1), "CN=d1", far_future()),
            audit(Outcome::Issued, 1),
            None,
        )
        .await
        .unwrap();
    drop(sqlite);
    // Open and idle, as a server between requests: no transaction, no lock being written.
    let server = rusqlite::Connection::open(&path).unwrap();
    let _: i64 = server
        .query_row("SELECT count(*) FROM certificates", [], |row| row.get(0))
        .unwrap();

    let db = TestDatabase::create("migrate_busy").await;
    let DatabaseUrl::Postgres(url) = db.database_url() else {
        unreachable!()
    };
    let e = estuary_store::migrate::sqlite_to_postgres(&path, &url, &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("is a server still running on it?"),
        "{e}"
    );
    let untouched = estuary_store::open(&db.database_url(), OpenMode::Existing)
        .await
        .unwrap_err();
    assert!(
        matches!(untouched, StoreError::NoSchema(_)),
        "{untouched:?}"
    );
    assert_eq!(
        estuary_store::migrate::copied_to_postgres_at(&path).unwrap(),
        None
    );

    // Once it is closed, the copy goes ahead and marks the store.
    drop(server);
    let report = estuary_store::migrate::sqlite_to_postgres(&path, &url, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.certificates, 1);
    assert!(report.marked);
    assert!(estuary_store::migrate::copied_to_postgres_at(&path)
        .unwrap()
        .is_some());
}

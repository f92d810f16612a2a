//! The worked test vectors of docs/PROTOCOL.md. Each hex string here is
//! printed in that document; the session-frame values were computed
//! independently (Python's hashlib/hmac) from the RFC 7677 exchange.
use tether_core::frame::encode_message;
use tether_core::message::{
    Challenge, ErrorCode, GoodbyeReason, Handshake, Hello, Message, Proof, Refusal, RefusalCode,
    Welcome,
};
use tether_core::scram::{
    ClientConfig, ClientCredentials, ClientLogin, Mechanism, Mechanisms, ServerCredentials,
    ServerLogin,
};
use tether_core::session::Role;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn frame(msg: &Handshake<'_>) -> String {
    let mut out = [0u8; 512];
    hex(encode_message(msg, &mut out, 512).unwrap())
}

#[test]
fn handshake_frames() {
    let cases: [(Handshake, &str); 6] = [
        (
            Handshake::Hello(Hello {
                version: 1,
                mechanisms: Mechanisms::ALL,
                max_frame: 512,
                client_first: CLIENT_FIRST,
            }),
            "00260001038004206e2c2c6e3d757365722c723d724f70724e476677456265525767624e456b714f",
        ),
        (
            Handshake::Challenge(Challenge {
                mechanism: Mechanism::ScramSha256,
                server_first: SERVER_FIRST,
            }),
            "0059010056723d724f70724e476677456265525767624e456b714f25687659447057556132526154434166757846496c6a29684e6c46246b302c733d5732325a614a30534e5937736f457355456a623667513d3d2c693d34303936",
        ),
        (
            Handshake::Proof(Proof {
                client_final: CLIENT_FINAL,
            }),
            "006c026a633d626977732c723d724f70724e476677456265525767624e456b714f25687659447057556132526154434166757846496c6a29684e6c46246b302c703d64487a625a617057496b346a55684e2b5574653979746167397a6a664d486773716d6d697a37416e6456513d",
        ),
        (
            Handshake::Welcome(Welcome {
                server_final: SERVER_FINAL,
                session_id: 1,
                max_frame: 4096,
                heartbeat_secs: 30,
            }),
            "0034032e763d36727269545242693233577052522f777475702b6d4d68555a556e2f6442356e4c544a52736a6c393547343d0180201e",
        ),
        (
            Handshake::Refused(Refusal {
                code: RefusalCode::Unauthorized,
                retry_after_secs: 0,
            }),
            "0003040000",
        ),
        (
            Handshake::Refused(Refusal {
                code: RefusalCode::Throttled,
                retry_after_secs: 300,
            }),
            "00040402ac02",
        ),
    ];
    for (msg, expected) in cases {
        assert_eq!(frame(&msg), expected, "{msg:?}");
    }
}

#[test]
fn session_frames_from_the_rfc7677_exchange() {
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&[
        0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa,
        0x81,
    ]);
    let keys =
        tether_core::scram::CachedKeys::derive(Mechanism::ScramSha256, "pencil", &salt, 4096)
            .unwrap();
    let client = ClientLogin::<256>::with_nonce(
        "user",
        ClientCredentials::Keys(&keys),
        ClientConfig::default(),
        "rOprNGfwEbeRWgbNEkqO",
    )
    .unwrap()
    .handle_challenge(Mechanism::ScramSha256, SERVER_FIRST)
    .unwrap();
    assert_eq!(client.client_final(), CLIENT_FINAL);
    let creds = ServerCredentials::from_cached_keys(&keys).unwrap();
    let server = ServerLogin::<512>::new(CLIENT_FIRST)
        .unwrap()
        .challenge_with_nonce(&creds, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
        .unwrap()
        .verify(CLIENT_FINAL)
        .unwrap();
    let client = client.handle_server_final(server.server_final()).unwrap();
    let (mut ctx, _) = client.session.into_halves(Role::Client);
    let (mut stx, _) = server.session.into_halves(Role::Server);
    let mut out = [0u8; 512];
    let call = Message::Call {
        id: 1,
        method: "echo",
        args: b"\x02hi",
    };
    assert_eq!(
        hex(ctx.seal(&call, &mut out, 512).unwrap()),
        "002300000000000000000001046563686f0302686974120dda4f234c901730a58d00203639"
    );
    let reply = Message::Reply {
        id: 1,
        result: b"\x02hi",
    };
    assert_eq!(
        hex(stx.seal(&reply, &mut out, 512).unwrap()),
        "001e0000000000000000010103026869ef54a9636422f36fccbdf6c94ddff82e"
    );
    let err = Message::Error {
        id: 2,
        code: ErrorCode::UNKNOWN_METHOD,
        message: "no such method",
    };
    assert_eq!(
        hex(stx.seal(&err, &mut out, 512).unwrap()),
        "002a00000000000000010202010e6e6f2073756368206d6574686f640425648681ccaf4e1b259bac3d03a96b"
    );
    let bye = Message::Goodbye {
        reason: GoodbyeReason::Normal,
    };
    assert_eq!(
        hex(ctx.seal(&bye, &mut out, 512).unwrap()),
        "001a00000000000000010600d5ddd423291ef30cbbb2f7db95384d0f"
    );
}

/// `scram_sha256` rows written by django-tether's `ScramSHA256PasswordHasher`
/// (`scripts/django/scram-vectors.py`; django-tether/tests/test_hashers.py
/// pins the same rows): tether-core reads each as the verifier it derives
/// from the `pbkdf2_sha256` row of the same password, salt and count.
#[test]
fn scram_sha256_rows_from_the_python_hasher() {
    use tether_core::django::{self, HashAlgorithm, RowKeys};
    const ROWS: [(&str, &str); 3] = [
        (
            "correct horse",
            "scram_sha256$1000000$56ryAKpSnLAXlMYo5d2L5x$Lq6=S7<HfbN5QG-&F^t1b1K2Hq<*-Wf;;bhS|%Yhv&2~9clxPU%rjL)R1BfhWQ-*wttZ(8TW^<VkqufJ",
        ),
        (
            "pencil",
            "scram_sha256$4096$W22ZaJ0SNY7soEsUEjb6gQ$vt_+SOVtCQ)lJttKV7ep`)pbrr;5~OJ)YsSqovb@x)itPB5j|lm)9~1>Z-A&$0-jotk%0(fzCZ8V}p;h",
        ),
        (
            "p\u{e4}ssw\u{f6}rd",
            "scram_sha256$4096$zoeSaltZoeSalt12345678$n+KXZxLC3hoQ-j4p%B)IC7h+_>5~5t0E!<C=ugtp(Ug_c)B8`+A9-Req9cSerM2Zx7L-%gr?|@y#O5aI",
        ),
    ];
    // Django 5.2's own pbkdf2_sha256 row for the first (as in core's unit tests).
    const DJANGO_52: &str =
        "pbkdf2_sha256$1000000$56ryAKpSnLAXlMYo5d2L5x$hPjabwIwfFzX6LEaxIt5cCa4001RIC/45BitWAzM4dA=";
    for (i, (password, row)) in ROWS.iter().enumerate() {
        let parsed = django::parse(row).unwrap();
        assert_eq!(parsed.algorithm, HashAlgorithm::ScramSha256);
        assert!(!parsed.algorithm.is_password_equivalent());
        assert!(matches!(parsed.keys, RowKeys::Verifier { .. }));
        let pbkdf2_row = if i == 0 {
            DJANGO_52.to_string()
        } else {
            django::make_password(
                Mechanism::ScramSha256,
                password,
                parsed.salt,
                parsed.iterations,
            )
            .unwrap()
            .to_string()
        };
        if i > 0 {
            // tether-core writes the same row as the Python hasher.
            assert_eq!(
                django::make_scram_sha256(password, parsed.salt, parsed.iterations)
                    .unwrap()
                    .as_str(),
                *row
            );
        }
        let from_pbkdf2 = django::credentials(&pbkdf2_row).unwrap();
        let from_scram = django::credentials(row).unwrap();
        assert_eq!(from_scram, from_pbkdf2, "{row}");
        assert_eq!(from_scram.mechanism, Mechanism::ScramSha256);
    }
}

use super::args::parse_permission_claim;
use super::*;

#[test]
fn file_then_flags() {
    let dir = std::env::temp_dir().join(format!("murmur-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        "name = \"n1\"\nlisten = \"127.0.0.1:9000\"\nping_interval = \"5s\"\noutbound_queue = 10\n\
         [[history_overrides]]\nprefix = \"chat.\"\nmax_events = 5\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path.clone()),
        outbound_queue: Some(20),
        ..ServeArgs::default()
    };
    let settings = args.settings().unwrap();
    assert_eq!(settings.name, "n1");
    assert_eq!(settings.listen.port(), 9000);
    assert_eq!(settings.ping_interval, Duration::from_secs(5));
    assert_eq!(settings.outbound_queue, 20, "flags win over the file");
    assert_eq!(settings.max_subscriptions, 1024, "defaults fill the rest");
    let retention = settings.retention();
    assert_eq!(retention.policy("chat.lobby").max_events, 5);
    assert_eq!(
        retention.policy("chat.lobby").max_age,
        Duration::from_secs(600)
    );
    assert_eq!(retention.policy("orders").max_events, 1000);

    std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nlisten_typo = 1\n").unwrap();
    let err = args.settings().unwrap_err().to_string();
    assert!(err.contains("listen_typo"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn auth_settings_from_file_and_flags() {
    let dir = std::env::temp_dir().join(format!("murmur-config-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        "auth = \"token\"\ntoken_hmac_secret = \"0123456789abcdef0123456789abcdef\"\n\
         token_audience = \"murmur\"\ntoken_leeway = \"10s\"\n\
         token_public_keys = [\"keys/2026-12.pem\"]\n\
         [anonymous_permissions]\nsub = [\"public.>\"]\ndeny = { sub = [\"public.secret\"] }\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path.clone()),
        hello_timeout: Some(Duration::from_secs(2)),
        token_issuer: Some("https://issuer.test".into()),
        ..ServeArgs::default()
    };
    let settings = args.settings().unwrap();
    assert_eq!(settings.auth, AuthMode::Token);
    assert_eq!(settings.token_leeway, Duration::from_secs(10));
    assert_eq!(settings.hello_timeout, Duration::from_secs(2));
    assert_eq!(
        settings.token_issuer.as_deref(),
        Some("https://issuer.test")
    );
    assert_eq!(
        settings.token_public_keys,
        [PathBuf::from("keys/2026-12.pem")]
    );
    let anonymous = settings.anonymous_permissions.clone().unwrap();
    assert_eq!(anonymous.subscribe, ["public.>"]);
    assert_eq!(anonymous.deny.subscribe, ["public.secret"]);
    let shown = settings.to_toml_masked();
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    assert_eq!(
        toml::from_str::<Settings>(&shown).unwrap().auth,
        AuthMode::Token
    );

    let flag_claim = parse_permission_claim(r#"{"sub":["a.>"],"history":["a.>"]}"#).unwrap();
    assert_eq!(flag_claim.history, ["a.>"]);
    assert!(parse_permission_claim(r#"{"subs":["a"]}"#).is_err());
    std::fs::remove_dir_all(dir).unwrap();

    let refused = |settings: Settings| settings.validate().unwrap_err().to_string();
    let token = |s: Settings| Settings {
        auth: AuthMode::Token,
        token_jwks: Some("jwks.json".into()),
        ..s
    };
    let long_leeway = token(Settings {
        token_leeway: Duration::from_secs(3600),
        ..Settings::default()
    });
    assert!(refused(long_leeway).contains("token_leeway"));
    let no_hello = token(Settings {
        hello_timeout: Duration::ZERO,
        ..Settings::default()
    });
    assert!(refused(no_hello).contains("hello_timeout"));
    let bad_anonymous = token(Settings {
        anonymous_permissions: Some(parse_permission_claim(r#"{"sub":["a.>.b"]}"#).unwrap()),
        ..Settings::default()
    });
    assert!(refused(bad_anonymous).contains("'a.>.b'"));
    let both_secrets = token(Settings {
        token_hmac_secret: Some(Secret("0123456789abcdef0123456789abcdef".into())),
        token_hmac_secret_file: Some("secret".into()),
        ..Settings::default()
    });
    assert!(refused(both_secrets).contains("not both"));
    assert!(token(Settings::default()).validate().is_ok());
}

#[test]
fn refuses_unworkable_settings() {
    let settings = Settings {
        idle_timeout: Duration::from_secs(1),
        ping_interval: Duration::from_secs(5),
        ..Settings::default()
    };
    assert!(matches!(
        settings.validate(),
        Err(ConfigError::Invalid {
            setting: "idle_timeout",
            ..
        })
    ));
    assert!(Settings::default().validate().is_ok());
}

const STRONG_KEY: &str = "rhzr6uV9q-itgxq40nPRrBj37lcLzbdepBsYOaJZ57E";

fn refusal(settings: &Settings) -> (&'static str, String) {
    match settings.validate() {
        Err(ConfigError::Invalid { setting, reason }) => (setting, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn weak_cluster_keys_are_refused_with_the_rule_they_break() {
    let with_key = |key: &str| Settings {
        cluster_key: Some(Secret(key.to_owned())),
        ..Settings::default()
    };
    let (setting, reason) = refusal(&with_key(&"a".repeat(16)));
    assert_eq!(setting, "cluster_key");
    assert!(reason.contains("at least 32"), "{reason}");
    assert!(reason.contains("murmur keygen"), "{reason}");
    let (_, reason) = refusal(&with_key("change-me-to-a-long-random-secret"));
    assert!(reason.contains("placeholder"), "{reason}");
    let (_, reason) = refusal(&with_key(&"abc".repeat(12)));
    assert!(reason.contains("distinct"), "{reason}");
    assert!(with_key(STRONG_KEY).validate().is_ok());
    assert_eq!(
        with_key(STRONG_KEY).effective_cluster_key().unwrap(),
        Some(Secret(STRONG_KEY.into()))
    );
    assert_eq!(Settings::default().effective_cluster_key().unwrap(), None);
}

#[test]
fn the_cluster_key_may_come_from_a_file() {
    let dir = std::env::temp_dir().join(format!("murmur-keyfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.key");
    let from_file = Settings {
        cluster_key_file: Some(path.clone()),
        ..Settings::default()
    };
    for contents in [
        STRONG_KEY.to_owned(),
        format!("{STRONG_KEY}\n"),
        format!("{STRONG_KEY}\r\n"),
    ] {
        std::fs::write(&path, contents).unwrap();
        assert_eq!(
            from_file.effective_cluster_key().unwrap(),
            Some(Secret(STRONG_KEY.into())),
            "one trailing newline is not part of the key"
        );
    }
    std::fs::write(&path, "short\n").unwrap();
    let (setting, reason) = refusal(&from_file);
    assert_eq!(setting, "cluster_key_file");
    assert!(reason.contains("at least 32"), "{reason}");
    std::fs::write(&path, "").unwrap();
    assert!(refusal(&from_file).1.contains("empty"));
    std::fs::remove_file(&path).unwrap();
    assert!(refusal(&from_file).1.contains("cannot read"));

    let both = Settings {
        cluster_key: Some(Secret(STRONG_KEY.into())),
        ..from_file.clone()
    };
    assert_eq!(refusal(&both).0, "cluster_key/cluster_key_file");

    // A flag or variable for one replaces the file's setting of the other.
    std::fs::write(&path, STRONG_KEY).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(&config, format!("cluster_key = \"{}\"\n", "x".repeat(40))).unwrap();
    let args = ServeArgs {
        config: Some(config.clone()),
        cluster_key_file: Some(path.clone()),
        ..ServeArgs::default()
    };
    let settings = args.settings().unwrap();
    assert_eq!(settings.cluster_key, None);
    assert_eq!(settings.cluster_key_file, Some(path.clone()));
    let both_flags = ServeArgs {
        cluster_key: Some(Secret(STRONG_KEY.into())),
        ..args
    };
    assert!(both_flags.settings().is_err());

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(key_file_readable_by_others(&path), Some(0o644));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(key_file_readable_by_others(&path), None);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn settings_have_upper_bounds() {
    let refused = |settings: Settings| match settings.validate() {
        Err(ConfigError::Invalid { setting, .. }) => setting,
        other => panic!("accepted: {other:?}"),
    };
    let huge = Settings {
        outbound_queue: 100_000_000,
        ..Settings::default()
    };
    assert_eq!(refused(huge), "outbound_queue");
    let huge = Settings {
        max_frame_bytes: 1 << 30,
        publish_buffer_bytes: 4 << 30,
        ..Settings::default()
    };
    assert_eq!(refused(huge), "max_frame_bytes");
    let huge = Settings {
        replication: 100,
        ..Settings::default()
    };
    assert_eq!(refused(huge), "replication");
    let huge = Settings {
        ack_timeout: Duration::from_secs(30 * 24 * 3600),
        ..Settings::default()
    };
    assert_eq!(refused(huge), "ack_timeout");
    let huge = Settings {
        max_topic_bytes: 10_000,
        ..Settings::default()
    };
    assert_eq!(refused(huge), "max_topic_bytes");
}

#[test]
fn the_replay_window_is_bounded() {
    for (window, ok) in [(0, false), (1, true), (30, true), (600, true), (601, false)] {
        let settings = Settings {
            gossip_replay_window: Duration::from_secs(window),
            ..Settings::default()
        };
        assert_eq!(settings.validate().is_ok(), ok, "{window}s");
    }
}

#[test]
fn refuses_unworkable_transport_settings() {
    let refused = |settings: Settings| match settings.validate() {
        Err(ConfigError::Invalid { setting, .. }) => setting,
        other => panic!("accepted: {other:?}"),
    };
    let half_tls = Settings {
        client_tls_cert: Some("cert.pem".into()),
        ..Settings::default()
    };
    assert_eq!(refused(half_tls), "client_tls_cert/client_tls_key");
    let bad_origin = Settings {
        allowed_origins: vec!["example.com".into()],
        ..Settings::default()
    };
    assert_eq!(refused(bad_origin), "allowed_origins");
    let no_deadline = Settings {
        handshake_timeout: Duration::ZERO,
        ..Settings::default()
    };
    assert_eq!(refused(no_deadline), "handshake_timeout");
    let no_connections = Settings {
        max_connections: 0,
        ..Settings::default()
    };
    assert_eq!(refused(no_connections), "max_connections");
    let same_port = Settings {
        admin_listen: Settings::default().listen,
        ..Settings::default()
    };
    assert_eq!(refused(same_port), "admin_listen");
}

#[test]
fn the_topic_idle_forget_is_bounded() {
    let week = 7 * 24 * 3600;
    for (idle, ok) in [
        (0, false),
        (1, true),
        (900, true),
        (week, true),
        (week + 1, false),
    ] {
        let settings = Settings {
            topic_idle_forget: Duration::from_secs(idle),
            ..Settings::default()
        };
        assert_eq!(settings.validate().is_ok(), ok, "{idle}s");
    }
    let args = ServeArgs {
        topic_idle_forget: Some(Duration::from_secs(30)),
        ..ServeArgs::default()
    };
    assert_eq!(
        args.settings().unwrap().topic_idle_forget,
        Duration::from_secs(30)
    );
}

#[test]
fn storage_settings_from_file_and_flags() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "storage = \"disk\"\ndata_dir = \"/var/lib/murmur\"\nfsync = \"interval:250ms\"\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path.clone()),
        ..ServeArgs::default()
    };
    let settings = args.settings().unwrap();
    assert_eq!(settings.storage, StorageMode::Disk);
    assert_eq!(settings.data_dir, PathBuf::from("/var/lib/murmur"));
    assert_eq!(settings.fsync, Fsync::Interval(Duration::from_millis(250)));
    let flagged = ServeArgs {
        fsync: Some(Fsync::Always),
        storage: Some(StorageMode::Memory),
        ..args.clone()
    };
    let settings = flagged.settings().unwrap();
    assert_eq!(
        (settings.storage, settings.fsync),
        (StorageMode::Memory, Fsync::Always)
    );
    let defaults = Settings::default();
    assert_eq!(
        (defaults.storage, defaults.fsync, defaults.data_dir),
        (
            StorageMode::Memory,
            Fsync::Interval(Duration::from_millis(100)),
            PathBuf::from("murmur-data")
        )
    );
    std::fs::write(&path, "fsync = \"sometimes\"\n").unwrap();
    let err = args.settings().unwrap_err().to_string();
    assert!(err.contains("sometimes"), "{err}");
    std::fs::write(&path, "storage = \"disk\"\ndata_dir = \"\"\n").unwrap();
    let err = args.settings().unwrap_err().to_string();
    assert!(err.contains("data_dir"), "{err}");
}

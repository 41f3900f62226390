//! The command line: configuration errors, redaction, fingerprints.

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_token-vendor"));
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn full_settings(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CORTI_ENVIRONMENT", "eu".into()),
        ("CORTI_CLIENT_ID", "client".into()),
        ("CORTI_CLIENT_SECRET", secret.into()),
        (
            "SESSION_JWT_SECRET",
            format!("{secret}-session-0123456789abcdef"),
        ),
        ("AUDIT_HMAC_KEY", format!("{secret}-audit")),
        ("AUDIT_ALLOW_UNSIGNED", "true".into()),
    ]
}

#[test]
fn serve_without_settings_stops_with_one_line_naming_the_setting() {
    let out = run(&["serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("CORTI_ENVIRONMENT"), "{stderr}");
}

#[test]
fn malformed_settings_are_named() {
    for (name, value) in [
        ("RATE_LIMIT_PER_USER", "many"),
        ("UPSTREAM_TIMEOUT", "later"),
        ("CORTI_ENVIRONMENT", "moon"),
        ("ALLOWED_ORIGINS", "*"),
    ] {
        let out = run(&["check-config"], &[(name, value)]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(name), "{stderr}");
    }
}

#[test]
fn two_session_key_sources_are_refused() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let mut env = full_settings(&secret);
    env.push(("SESSION_JWKS_URL", "https://id.example.test/jwks".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run(&["check-config"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly one"));
}

/// `full_settings` with a public session key source instead of the HMAC secret.
fn public_key_settings(
    secret: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = full_settings(secret);
    env.retain(|(k, _)| *k != "SESSION_JWT_SECRET");
    env.push(("SESSION_JWKS_URL", "https://id.example.test/jwks".into()));
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

fn check_config(env: &[(&'static str, String)]) -> Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run(&["check-config"], &env)
}

#[test]
fn a_public_session_key_without_audience_or_issuer_stops_start_up() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    // Any token the identity provider signed for any of its clients would pass.
    for (extra, named) in [
        (&[][..], "SESSION_JWT_AUDIENCE"),
        (
            &[("SESSION_JWT_ISSUER", "https://id.example.test")][..],
            "SESSION_JWT_AUDIENCE",
        ),
        (
            &[("SESSION_JWT_AUDIENCE", "token-vendor")][..],
            "SESSION_JWT_ISSUER",
        ),
    ] {
        // `check-config` runs the same one check as `serve`, without serving on success.
        let out = check_config(&public_key_settings(&secret, extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("error: {named}:")),
            "{extra:?}: {stderr}"
        );
    }
}

#[test]
fn a_public_session_key_runs_with_audience_and_issuer_or_an_explicit_opt_out() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    for extra in [
        &[
            ("SESSION_JWT_AUDIENCE", "token-vendor"),
            ("SESSION_JWT_ISSUER", "https://id.example.test"),
        ][..],
        &[("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss")][..],
        &[
            ("SESSION_JWT_AUDIENCE", "token-vendor"),
            ("SESSION_JWT_UNCHECKED_CLAIMS", "iss"),
        ][..],
    ] {
        let out = check_config(&public_key_settings(&secret, extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {stderr}");
    }
    // The opt-out names the claims it gives up; a claim both checked and unchecked,
    // or one the setting does not know, is a mistake.
    for extra in [
        &[
            ("SESSION_JWT_AUDIENCE", "token-vendor"),
            ("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss"),
        ][..],
        &[("SESSION_JWT_UNCHECKED_CLAIMS", "aud,iss,exp")][..],
    ] {
        let out = check_config(&public_key_settings(&secret, extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("error: SESSION_JWT_UNCHECKED_CLAIMS:"),
            "{extra:?}: {stderr}"
        );
    }
}

#[test]
fn check_config_redacts_every_secret() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let mut env = full_settings(&secret);
    env.push((
        "DATABASE_URL",
        format!("postgres://tv:{secret}-db@127.0.0.1/tv"),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run(&["check-config"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CORTI_CLIENT_SECRET=(set, redacted)"));
    assert!(stdout.contains("CORTI_AUTH_URL=https://auth.eu.corti.app"));
    assert!(!stdout.contains(&secret), "{stdout}");
}

#[test]
fn check_config_shows_the_opentelemetry_settings_without_header_values() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let api_key = format!("fake-otlp-key-{}", uuid::Uuid::new_v4().simple());
    let headers = format!("authorization=Bearer {api_key},x-team=vending");
    let mut env = full_settings(&secret);
    env.extend([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318".to_owned(),
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run(&["check-config"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318",
        "OTEL_EXPORTER_OTLP_HEADERS=(set, redacted: authorization, x-team)",
        "OTEL_TRACES_SAMPLER=parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG=0.25",
        "OTEL_SERVICE_NAME=token-vendor (default)",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} in {stdout}");
    }
    assert!(!stdout.contains(&api_key), "{stdout}");
    assert!(!stdout.contains("vending"), "{stdout}");

    // Only OTLP over HTTP/protobuf is built in: gRPC is refused, not spoken wrongly.
    let mut grpc = env.clone();
    grpc.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"));
    let out = run(&["check-config"], &grpc);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OTEL_EXPORTER_OTLP_PROTOCOL"));

    // Without an endpoint, traces are off and say so.
    let out = run(&["check-config"], &env[..env.len() - 4]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == "OTEL_EXPORTER_OTLP_ENDPOINT=(unset: OpenTelemetry traces off)"));
}

#[test]
fn secrets_can_come_from_files_and_a_toml_config() {
    let dir = std::env::temp_dir().join(format!("tv-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, "fake-secret-in-a-file\n").unwrap();
    let config = dir.join("token-vendor.toml");
    std::fs::write(
        &config,
        "corti_environment = \"us\"\ncorti_tenant = \"fromfile\"\ncorti_client_id = \"client\"\n\
         session_jwt_secret = \"fake-session-secret-0123456789abcdef\"\naudit_hmac_key = \"fake-audit-key-0123\"\n\
         audit_allow_unsigned = true\n",
    )
    .unwrap();
    let out = run(
        &["--config", config.to_str().unwrap(), "check-config"],
        &[
            ("CORTI_CLIENT_SECRET_FILE", secret_file.to_str().unwrap()),
            ("CORTI_TENANT", "fromenv"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CORTI_ENVIRONMENT=us"));
    assert!(
        stdout.contains("CORTI_TENANT=fromenv"),
        "environment wins: {stdout}"
    );
    assert!(!stdout.contains("fake-secret-in-a-file"));
}

#[test]
fn audit_hash_prints_the_keyed_fingerprint() {
    let out = run(
        &["audit", "hash", "some.token.value"],
        &[("AUDIT_HMAC_KEY", "fake-audit-key-for-cli")],
    );
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let expected =
        token_vendor::audit::Fingerprinter::new("fake-audit-key-for-cli".to_string().into())
            .fingerprint("some.token.value");
    assert_eq!(printed, expected);
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let db = std::env::temp_dir().join(format!("tv-serve-{}.db", uuid::Uuid::new_v4()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_token-vendor"));
    cmd.arg("serve").env_clear();
    for (k, v) in full_settings(&secret) {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("token-vendor listening"));
    assert!(listening.is_some(), "serve logged that it listens");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "serve did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

/// A one-shot HTTP server on loopback that answers every connection with `reply`
/// (or never answers when `reply` is `None`); returns its port.
fn canned_http_server(reply: Option<&'static str>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            // Read the whole request head before answering, as a real server does.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            match reply {
                Some(reply) => {
                    let _ = conn.write_all(reply.as_bytes());
                }
                None => std::thread::sleep(std::time::Duration::from_secs(30)),
            }
        }
    });
    port
}

#[test]
fn healthcheck_succeeds_when_healthz_answers_200_through_loopback_for_a_wildcard_bind() {
    let port = canned_http_server(Some(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    ));
    let out = run(
        &["healthcheck"],
        &[("LISTEN_ADDR", &format!("0.0.0.0:{port}"))],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn healthcheck_fails_when_healthz_answers_anything_but_200() {
    let port = canned_http_server(Some(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
    ));
    let out = run(
        &["healthcheck"],
        &[("LISTEN_ADDR", &format!("127.0.0.1:{port}"))],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let out = run(
        &["healthcheck"],
        &[("LISTEN_ADDR", &format!("127.0.0.1:{port}"))],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn healthcheck_gives_up_quickly_on_a_service_that_never_answers() {
    let port = canned_http_server(None);
    let started = std::time::Instant::now();
    let out = run(
        &["healthcheck"],
        &[("LISTEN_ADDR", &format!("127.0.0.1:{port}"))],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn healthcheck_passes_against_the_real_service() {
    use std::io::{BufRead, BufReader};
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let db = std::env::temp_dir().join(format!("tv-health-{}.db", uuid::Uuid::new_v4()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_token-vendor"));
    cmd.arg("serve").env_clear();
    for (k, v) in full_settings(&secret) {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().unwrap();
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("token-vendor listening"))
        .expect("serve logged that it listens");
    let line: serde_json::Value = serde_json::from_str(&listening).expect("JSON log line");
    let port = line["fields"]["port"]
        .as_u64()
        .or_else(|| line["port"].as_u64())
        .unwrap_or_else(|| panic!("no port in {listening}"));

    let out = run(
        &["healthcheck"],
        &[("LISTEN_ADDR", &format!("127.0.0.1:{port}"))],
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&db);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_lists_every_tenant_with_its_secret_redacted() {
    let dir = std::env::temp_dir().join(format!("tv-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let acme_secret = format!("fake-acme-{}", uuid::Uuid::new_v4().simple());
    let base_secret = format!("fake-base-{}", uuid::Uuid::new_v4().simple());
    let secret_file = dir.join("acme-secret");
    std::fs::write(&secret_file, format!("{acme_secret}\n")).unwrap();
    let config = dir.join("token-vendor.toml");
    let tenants = format!(
        "default_tenant = \"base\"\n\
         session_jwt_secret = \"fake-session-secret-0123456789abcdef\"\n\
         audit_hmac_key = \"fake-audit-key-0123\"\n\
         audit_allow_unsigned = true\n\n\
         [[tenants]]\nname = \"base\"\nenvironment = \"eu\"\nclient_id = \"base-client\"\nclient_secret = \"{base_secret}\"\n\n\
         [[tenants]]\nname = \"acme\"\nenvironment = \"us\"\nclient_id = \"acme-client\"\nclient_secret_file = \"{}\"\n",
        secret_file.display()
    );
    std::fs::write(&config, &tenants).unwrap();

    let out = run(&["--config", config.to_str().unwrap(), "check-config"], &[]);

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("DEFAULT_TENANT=base"), "{stdout}");
    assert!(stdout.contains(
        "tenants[base]=environment=eu client_id=base-client client_secret=(set, redacted) auth_url=https://auth.eu.corti.app"
    ), "{stdout}");
    assert!(stdout.contains(&format!(
        "tenants[acme]=environment=us client_id=acme-client client_secret=(set, redacted) client_secret_file={} auth_url=https://auth.us.corti.app",
        secret_file.display()
    )), "{stdout}");
    assert!(
        stdout.contains("tenants: base (eu, default), acme (us)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&acme_secret) && !stdout.contains(&base_secret),
        "{stdout}"
    );

    // A mistake in one entry stops start-up with one line naming the key.
    std::fs::write(&config, tenants.replace("\"us\"", "\"mars\"")).unwrap();
    let out = run(&["--config", config.to_str().unwrap(), "serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("tenants[acme].environment"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_to_start_without_a_signing_key_unless_told_to() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let db = std::env::temp_dir().join(format!("tv-unsigned-{}.db", uuid::Uuid::new_v4()));
    let database = format!("sqlite://{}", db.display());
    let mut env: Vec<(&str, String)> = full_settings(&secret)
        .into_iter()
        .filter(|(k, _)| *k != "AUDIT_ALLOW_UNSIGNED")
        .collect();
    env.push(("LISTEN_ADDR", "127.0.0.1:0".into()));
    env.push(("DATABASE_URL", database));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for command in ["serve", "check-config"] {
        let out = run(&[command], &env_refs);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("AUDIT_SIGNING_KEY") && stderr.contains("AUDIT_ALLOW_UNSIGNED=true"),
            "{command}: {stderr}"
        );
    }
    let mut allowed = env_refs.clone();
    allowed.push(("AUDIT_ALLOW_UNSIGNED", "true"));
    let out = run(&["check-config"], &allowed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&db);
}

#[test]
fn check_config_hides_the_userinfo_of_every_url() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let mut env = full_settings(&secret);
    env.retain(|(k, _)| *k != "SESSION_JWT_SECRET");
    env.extend([
        (
            "SESSION_INTROSPECTION_URL",
            format!("http://intro-user:{secret}-intro@127.0.0.1:9/introspect"),
        ),
        ("SESSION_INTROSPECTION_CLIENT_ID", "token-vendor".to_owned()),
        ("SESSION_INTROSPECTION_AUDIENCE", "token-vendor".to_owned()),
        (
            "SESSION_INTROSPECTION_CLIENT_SECRET",
            format!("{secret}-client"),
        ),
        (
            "CORTI_AUTH_URL",
            format!("https://{secret}-tokenasuser@auth.example.test"),
        ),
        (
            "DATABASE_URL",
            format!("postgres://tv:{secret}-db@127.0.0.1/tv"),
        ),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run(&["check-config"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains(&secret), "{stdout}");
    assert!(!stderr.contains(&secret), "{stderr}");
    assert!(
        stdout.lines().any(
            |l| l.starts_with("SESSION_INTROSPECTION_URL=http://") && l.contains("127.0.0.1:9")
        ),
        "{stdout}"
    );
}

#[test]
fn introspection_needs_an_expected_audience_or_the_explicit_opt_out() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let mut env = full_settings(&secret);
    env.retain(|(k, _)| *k != "SESSION_JWT_SECRET");
    env.extend([
        (
            "SESSION_INTROSPECTION_URL",
            "http://127.0.0.1:9/introspect".to_owned(),
        ),
        ("SESSION_INTROSPECTION_CLIENT_ID", "token-vendor".to_owned()),
        (
            "SESSION_INTROSPECTION_CLIENT_SECRET",
            format!("{secret}-client"),
        ),
    ]);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run(&["check-config"], &refs);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SESSION_INTROSPECTION_AUDIENCE"));
    for audience in ["our-app", "*"] {
        let mut with = refs.clone();
        with.push(("SESSION_INTROSPECTION_AUDIENCE", audience));
        let out = run(&["check-config"], &with);
        assert_eq!(out.status.code(), Some(0), "{audience}: {out:?}");
    }
}

#[test]
fn the_store_urls_can_come_from_files_with_their_credentials() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let dir = std::env::temp_dir().join(format!("tv-cli-urls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db_file = dir.join("database-url");
    std::fs::write(
        &db_file,
        format!("postgres://tv:{secret}-db@db.internal/tv\n"),
    )
    .unwrap();
    let redis_file = dir.join("redis-url");
    std::fs::write(
        &redis_file,
        format!("rediss://:{secret}-redis@cache.internal:6380\n"),
    )
    .unwrap();
    let mut env = full_settings(&secret);
    env.push(("DATABASE_URL_FILE", db_file.display().to_string()));
    env.push(("REDIS_URL_FILE", redis_file.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run(&["check-config"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("DATABASE_URL=postgres://") && l.contains("@db.internal/tv")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("RATE_LIMIT_REDIS_URL=rediss://")
                && l.contains("@cache.internal:6380")),
        "{stdout}"
    );
    assert!(!stdout.contains(&secret), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_key_in_the_settings_file_stops_with_the_closest_known_key() {
    let dir = std::env::temp_dir().join(format!("tv-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("token-vendor.toml");
    std::fs::write(&config, "rate_limit_per_usr = \"5/minute\"\n").unwrap();

    let out = run(&["--config", config.to_str().unwrap(), "check-config"], &[]);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "unknown key `rate_limit_per_usr` in {}; did you mean `rate_limit_per_user`?",
            config.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_key_in_a_tenant_table_stops_with_the_closest_tenant_key() {
    let dir = std::env::temp_dir().join(format!("tv-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("token-vendor.toml");
    std::fs::write(
        &config,
        "[[tenants]]\nname = \"acme\"\nenvironment = \"us\"\nclient_id = \"acme-client\"\n\
         client_secert = \"fake-acme-secret\"\n",
    )
    .unwrap();

    let out = run(&["--config", config.to_str().unwrap(), "check-config"], &[]);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tenants[acme].client_secert"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "unknown key `client_secert` in {}; did you mean `client_secret`?",
            config.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_variable_of_ours_is_a_warning_naming_the_closest_setting() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let mut env = full_settings(&secret);
    env.push(("RATE_LIMIT_PER_USR", "5/minute".into()));
    env.push(("DATABASE_URL_FIEL", "/run/secrets/db".into()));
    // Not ours: another program's variables are left alone.
    env.push(("PGHOST", "db.internal".into()));
    env.push(("HOME", "/root".into()));

    let out = check_config(&env);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "warning: unknown variable RATE_LIMIT_PER_USR; did you mean RATE_LIMIT_PER_USER?"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown variable DATABASE_URL_FIEL; did you mean DATABASE_URL_FILE?"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("PGHOST") && !stderr.contains("HOME"),
        "{stderr}"
    );
}

/// A variable that is not UTF-8 (anyone's: the environment is shared) is no panic: an
/// unrelated one is skipped, and one of ours fails its own parse, named.
#[test]
fn variables_that_are_not_utf8_are_no_panic() {
    use std::os::unix::ffi::OsStrExt;
    let bytes = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_token-vendor"))
        .arg("check-config")
        .env_clear()
        .env(bytes(b"SOMEONE_ELSES_\xff"), "x")
        .env("OTHER", bytes(b"\xff\xfe"))
        .env("LISTEN_ADDR", bytes(b"127.0.0.1:80\xff"))
        .output()
        .expect("run token-vendor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("LISTEN_ADDR"), "{stderr}");
}

/// A start that stops for a missing setting first says which variables it did not know:
/// a mistyped name is often why the setting is missing.
#[test]
fn serve_stopping_for_a_missing_setting_names_the_mistyped_variable() {
    let secret = format!("fake-{}", uuid::Uuid::new_v4().simple());
    let mut env: Vec<(&str, String)> = full_settings(&secret)
        .into_iter()
        .filter(|(k, _)| *k != "SESSION_JWT_SECRET")
        .collect();
    env.push(("SESSION_JWT_SECRT", secret.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let out = run(&["serve"], &env);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown variable SESSION_JWT_SECRT; did you mean SESSION_JWT_SECRET?"),
        "{stderr}"
    );
    assert!(!stderr.contains(&secret), "{stderr}");
}

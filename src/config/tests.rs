//! The settings through their public face: sources in, `Settings`/`ServeSettings` out.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;
use crate::corti::Environment;

#[test]
fn environment_wins_over_file_and_secrets_come_from_files() {
    let dir = std::env::temp_dir().join(format!("tv-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_path = dir.join("secret");
    std::fs::write(&secret_path, "fake-secret-from-file\n").unwrap();
    let mut sources = Sources::from_pairs([
        ("CORTI_TENANT", "fromenv"),
        ("CORTI_CLIENT_SECRET_FILE", secret_path.to_str().unwrap()),
    ]);
    sources
        .file
        .insert("corti_tenant".into(), "fromfile".into());
    sources
        .file
        .insert("upstream_timeout".into(), "800ms".into());
    let s = Settings::load(&sources).unwrap();
    assert_eq!(s.corti.tenant.as_str(), "fromenv");
    assert_eq!(s.corti.upstream_timeout, Duration::from_millis(800));
    assert_eq!(
        s.corti.client_secret.unwrap().expose_secret(),
        "fake-secret-from-file"
    );
}

#[test]
fn malformed_settings_name_themselves() {
    for (k, v) in [
        ("CORTI_ENVIRONMENT", "mars"),
        ("RATE_LIMIT_PER_USER", "lots"),
        ("UPSTREAM_TIMEOUT", "soon"),
        ("ALLOWED_ORIGINS", "https://app.example/path"),
        ("TRUSTED_PROXIES", "10.0.0.0/99"),
        ("LISTEN_ADDR", "nowhere"),
        ("CORTI_AUTH_URL", "http://auth.example.test"),
        ("SESSION_JWKS_URL", "http://id.example.test/jwks"),
    ] {
        let err = Settings::load(&Sources::from_pairs([(k, v)])).unwrap_err();
        assert_eq!(err.setting, k, "{err}");
    }
}

#[test]
fn reused_tokens_outlast_the_corti_sdks_expiry_margin_by_default() {
    // The SDK's BUFFER_IN_MINUTES = 2: a token with 120 s or less left is "expired" to it.
    let s = Settings::load(&Sources::default()).unwrap();
    assert!(s.limits.token_reuse_min_ttl > Duration::from_secs(120));
    assert_eq!(s.limits.token_reuse_min_ttl, Duration::from_secs(150));
    let explicit = Settings::load(&Sources::from_pairs([("TOKEN_REUSE_MIN_TTL", "60")])).unwrap();
    assert_eq!(explicit.limits.token_reuse_min_ttl, Duration::from_secs(60));
    let off = Settings::load(&Sources::from_pairs([("TOKEN_REUSE_MIN_TTL", "0")])).unwrap();
    assert!(off.limits.token_reuse_min_ttl.is_zero());
}

#[test]
fn rates_parse() {
    let r: Rate = "20/minute".parse().unwrap();
    assert_eq!(r.count.get(), 20);
    assert_eq!(r.period, Duration::from_secs(60));
    assert!("0/second".parse::<Rate>().is_err());
}

#[test]
fn every_default_parses() {
    let s = Settings::load(&Sources::default()).expect("defaults parse");
    assert_eq!(
        s.server.listen_addr,
        SocketAddr::from(([127, 0, 0, 1], 8080))
    );
    assert_eq!(s.corti.tenant.as_str(), "base");
    assert_eq!(s.limits.token_reuse_min_ttl, Duration::from_secs(150));
    assert_eq!(s.corti.upstream_timeout, Duration::from_secs(5));
    assert_eq!(s.server.shutdown_grace, Duration::from_secs(10));
    assert_eq!(s.limits.per_user.to_string(), "30/minute");
}

fn complete() -> Vec<(&'static str, String)> {
    vec![
        ("CORTI_ENVIRONMENT", "us".into()),
        ("CORTI_CLIENT_ID", "client".into()),
        ("CORTI_CLIENT_SECRET", "fake-client-secret".into()),
        ("SESSION_JWT_SECRET", "x".repeat(32)),
        ("AUDIT_HMAC_KEY", "y".repeat(16)),
    ]
}

#[test]
fn serve_settings_are_complete_or_name_the_first_gap() {
    let s = ServeSettings::load(&Sources::from_pairs(complete())).unwrap();
    assert_eq!(s.corti().auth_url, "https://auth.us.corti.app");
    assert!(matches!(s.session.keys, SessionKeys::Secret(_)));
    for (i, (name, _)) in complete().into_iter().enumerate() {
        let mut pairs = complete();
        pairs.remove(i);
        let err = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap_err();
        assert_eq!(err.setting, name, "{err}");
    }
}

#[test]
fn introspection_is_a_session_source_of_its_own() {
    let introspection = |pairs: &mut Vec<(&'static str, String)>| {
        pairs.push((
            "SESSION_INTROSPECTION_URL",
            "https://id.example.test/introspect".into(),
        ));
        pairs.push(("SESSION_INTROSPECTION_CLIENT_ID", "token-vendor".into()));
        pairs.push(("SESSION_INTROSPECTION_AUDIENCE", "app".into()));
        pairs.push((
            "SESSION_INTROSPECTION_CLIENT_SECRET",
            "fake-introspection-secret".into(),
        ));
    };
    // Beside a JWT key: refused, naming both.
    let mut pairs = complete();
    introspection(&mut pairs);
    let err = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("SESSION_JWT_SECRET and SESSION_INTROSPECTION_URL"),
        "{text}"
    );
    // Alone: accepted, with the default cache bound.
    let mut pairs = complete();
    pairs.retain(|(k, _)| *k != "SESSION_JWT_SECRET");
    introspection(&mut pairs);
    let s = ServeSettings::load(&Sources::from_pairs(pairs.clone())).unwrap();
    let SessionKeys::Introspection(i) = &s.session.keys else {
        panic!("not introspection: {:?}", s.session.keys);
    };
    assert_eq!(i.cache_ttl, Duration::from_secs(30));
    assert_eq!(i.client_id, "token-vendor");
    // A cache bound past the cap, a missing secret, a JWT-only rule: each refused.
    let mut too_long = pairs.clone();
    too_long.push(("SESSION_INTROSPECTION_CACHE_TTL", "10m".into()));
    let err = ServeSettings::load(&Sources::from_pairs(too_long)).unwrap_err();
    assert_eq!(err.setting, "SESSION_INTROSPECTION_CACHE_TTL");
    let mut no_secret = pairs.clone();
    no_secret.retain(|(k, _)| *k != "SESSION_INTROSPECTION_CLIENT_SECRET");
    let err = ServeSettings::load(&Sources::from_pairs(no_secret)).unwrap_err();
    assert_eq!(err.setting, "SESSION_INTROSPECTION_CLIENT_SECRET");
    let mut jwt_rule = pairs.clone();
    jwt_rule.push(("SESSION_JWT_AUDIENCE", "token-vendor".into()));
    let err = ServeSettings::load(&Sources::from_pairs(jwt_rule)).unwrap_err();
    assert_eq!(err.setting, "SESSION_JWT_AUDIENCE");
    // A client id without a URL would do nothing: refused.
    let mut leftover = complete();
    leftover.push(("SESSION_INTROSPECTION_CLIENT_ID", "token-vendor".into()));
    let err = ServeSettings::load(&Sources::from_pairs(leftover)).unwrap_err();
    assert_eq!(err.setting, "SESSION_INTROSPECTION_CLIENT_ID");
    // The secret is redacted in check-config's listing.
    let settings = Settings::load(&Sources::from_pairs(pairs)).unwrap();
    let lines = settings.redacted_lines().join("\n");
    assert!(!lines.contains("fake-introspection-secret"), "{lines}");
    assert!(
        lines.contains("SESSION_INTROSPECTION_CLIENT_SECRET=(set, redacted)"),
        "{lines}"
    );
}

#[test]
fn introspection_secret_file_is_remembered_for_reloading() {
    let dir = std::env::temp_dir().join(format!("tv-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("introspection-secret");
    std::fs::write(&path, "fake-secret-from-file\n").unwrap();
    let sources = Sources::from_pairs([(
        "SESSION_INTROSPECTION_CLIENT_SECRET_FILE",
        path.to_str().unwrap(),
    )]);
    let s = Settings::load(&sources).unwrap();
    assert_eq!(
        s.session.introspection_client_secret_file.as_deref(),
        Some(path.as_path())
    );
    assert_eq!(
        s.session
            .introspection_client_secret
            .as_ref()
            .map(|v| v.expose_secret().to_owned())
            .as_deref(),
        Some("fake-secret-from-file")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_takes_exactly_one_session_key_source() {
    let mut pairs = complete();
    pairs.push(("SESSION_JWKS_URL", "https://id.example.test/jwks".into()));
    let err = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap_err();
    assert!(err.to_string().contains("exactly one"), "{err}");
    let mut pairs = complete();
    pairs.retain(|(k, _)| *k != "SESSION_JWT_SECRET");
    pairs.push(("SESSION_JWKS_URL", "https://id.example.test/jwks".into()));
    pairs.push(("SESSION_JWT_AUDIENCE", "token-vendor".into()));
    pairs.push(("SESSION_JWT_ISSUER", "https://id.example.test".into()));
    let s = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap();
    assert!(
        matches!(s.session.keys, SessionKeys::Jwks(ref u) if u == "https://id.example.test/jwks")
    );
}

fn with(extra: &[(&'static str, &str)]) -> Result<ServeSettings, ConfigError> {
    let mut pairs = complete();
    pairs.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    ServeSettings::load(&Sources::from_pairs(pairs))
}

#[test]
fn redis_url_is_another_name_for_the_rate_limit_redis_url() {
    let s = with(&[("REDIS_URL", "redis://cache.internal:6379")]).unwrap();
    assert_eq!(
        s.rate_limit_redis_url.as_deref(),
        Some("redis://cache.internal:6379")
    );
    let same = [
        ("REDIS_URL", "redis://cache.internal:6379"),
        ("RATE_LIMIT_REDIS_URL", "redis://cache.internal:6379"),
    ];
    assert!(with(&same).is_ok());
    let err = with(&[
        ("REDIS_URL", "redis://a.internal:6379"),
        ("RATE_LIMIT_REDIS_URL", "redis://b.internal:6379"),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "REDIS_URL", "{err}");
}

#[test]
fn the_token_cache_key_is_long_and_comes_with_redis() {
    let key = "k".repeat(32);
    let redis = ("REDIS_URL", "redis://cache.internal:6379");
    let s = with(&[redis, ("TOKEN_CACHE_KEY", &key)]).unwrap();
    assert!(s.token_cache_key.is_some());
    let short = with(&[redis, ("TOKEN_CACHE_KEY", &key[1..])]).unwrap_err();
    assert_eq!(short.setting, "TOKEN_CACHE_KEY", "{short}");
    let alone = with(&[("TOKEN_CACHE_KEY", &key)]).unwrap_err();
    assert_eq!(alone.setting, "TOKEN_CACHE_KEY", "{alone}");
    assert!(alone.to_string().contains("REDIS_URL"), "{alone}");
}

#[test]
fn a_public_session_key_needs_audience_and_issuer_unless_given_up() {
    let jwks = || {
        let mut pairs = complete();
        pairs.retain(|(k, _)| *k != "SESSION_JWT_SECRET");
        pairs.push(("SESSION_JWKS_URL", "https://id.example.test/jwks".into()));
        pairs
    };
    let err = ServeSettings::load(&Sources::from_pairs(jwks())).unwrap_err();
    assert_eq!(err.setting, "SESSION_JWT_AUDIENCE", "{err}");
    let mut pairs = jwks();
    pairs.push(("SESSION_JWT_UNCHECKED_CLAIMS", "aud".into()));
    let err = ServeSettings::load(&Sources::from_pairs(pairs.clone())).unwrap_err();
    assert_eq!(err.setting, "SESSION_JWT_ISSUER", "{err}");
    pairs.push(("SESSION_JWT_ISSUER", "https://id.example.test".into()));
    let s = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap();
    assert_eq!(s.session.audience, None);
    // An HMAC secret is the app's own: nobody else signs with it.
    assert!(ServeSettings::load(&Sources::from_pairs(complete())).is_ok());
    let s = Settings::load(&Sources::from_pairs([(
        "SESSION_JWT_UNCHECKED_CLAIMS",
        " iss , aud ",
    )]))
    .unwrap();
    assert_eq!(s.session.jwt_unchecked_claims.to_string(), "aud,iss");
}

#[test]
fn dev_token_lifetime_is_read_like_every_other_setting() {
    let mut sources = Sources::default();
    sources
        .file
        .insert("dev_token_lifetime".into(), "2m".into());
    let s = Settings::load(&sources).unwrap();
    assert_eq!(s.dev_token_lifetime, Duration::from_secs(120));
    let s = Settings::load(&Sources::from_pairs([("DEV_TOKEN_LIFETIME", "45")])).unwrap();
    assert_eq!(s.dev_token_lifetime, Duration::from_secs(45));
}

/// The complete settings without any `CORTI_*`, plus a TOML text.
fn tenants_toml(text: &str) -> Result<ServeSettings, ConfigError> {
    let mut pairs = complete();
    pairs.retain(|(k, _)| !k.starts_with("CORTI_"));
    ServeSettings::load(&Sources::from_pairs_and_toml(pairs, text)?)
}

const TWO: &str = r#"
default_tenant = "acme"

[[tenants]]
name = "base"
environment = "eu"
client_id = "base-client"
client_secret = "fake-base-secret"

[[tenants]]
name = "acme"
environment = "us"
client_id = "acme-client"
client_secret = "fake-acme-secret"
auth_url = "http://127.0.0.1:9/"
"#;

#[test]
fn tenants_come_from_the_toml_file_with_the_default_first() {
    let s = tenants_toml(TWO).unwrap();
    let names: Vec<&str> = s.tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(names, ["acme", "base"]);
    assert_eq!(s.corti().environment, Environment::Us);
    assert_eq!(s.corti().auth_url, "http://127.0.0.1:9");
    assert_eq!(s.tenants[1].auth_url, "https://auth.eu.corti.app");
    assert_eq!(
        s.tenants[1].client_secret.expose_secret(),
        "fake-base-secret"
    );
    let lines =
        Settings::load(&Sources::from_pairs_and_toml(Vec::<(String, String)>::new(), TWO).unwrap())
            .unwrap()
            .redacted_lines()
            .join("\n");
    assert!(lines.contains("DEFAULT_TENANT=acme"), "{lines}");
    assert!(
        lines.contains(
            "tenants[acme]=environment=us client_id=acme-client client_secret=(set, redacted)"
        ),
        "{lines}"
    );
    assert!(!lines.contains("fake-acme-secret") && !lines.contains("fake-base-secret"));
}

#[test]
fn a_single_tenant_needs_no_default_and_corti_settings_are_one_more_tenant() {
    let one = TWO
        .split("[[tenants]]")
        .take(2)
        .collect::<Vec<_>>()
        .join("[[tenants]]");
    let one = one.replace("default_tenant = \"acme\"", "");
    assert_eq!(tenants_toml(&one).unwrap().corti().tenant.as_str(), "base");
    // CORTI_* (tenant `base`) beside an `acme` entry: two tenants, so a default.
    let acme = format!("[[tenants]]{}", TWO.split("[[tenants]]").nth(2).unwrap());
    let both = |extra: &str| {
        ServeSettings::load(
            &Sources::from_pairs_and_toml(complete(), &format!("{extra}\n{acme}")).unwrap(),
        )
    };
    let err = both("").unwrap_err();
    assert_eq!(err.setting, "DEFAULT_TENANT", "{err}");
    let s = both("default_tenant = \"base\"").unwrap();
    let names: Vec<&str> = s.tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(names, ["base", "acme"]);
    assert_eq!(s.corti().client_id, "client");
    // The same name from CORTI_TENANT and [[tenants]] is one tenant twice.
    let mut pairs = complete();
    pairs.push(("CORTI_TENANT", "acme".into()));
    let err =
        ServeSettings::load(&Sources::from_pairs_and_toml(pairs, &acme).unwrap()).unwrap_err();
    assert_eq!(err.setting, "tenants[acme].name", "{err}");
    assert!(err.problem.contains("CORTI_TENANT"), "{err}");
}

#[test]
fn each_tenant_mistake_names_its_key() {
    let cases = [
        (
            TWO.replace("name = \"acme\"", "name = \"base\""),
            "tenants[base].name",
        ),
        (
            TWO.replace("\"us\"", "\"mars\""),
            "tenants[acme].environment",
        ),
        (
            TWO.replace("client_id = \"acme-client\"", ""),
            "tenants[acme].client_id",
        ),
        (
            TWO.replace("client_secret = \"fake-acme-secret\"", ""),
            "tenants[acme].client_secret",
        ),
        (
            TWO.replace(
                "client_secret = \"fake-acme-secret\"",
                "client_secret = \"x\"\nclient_secret_file = \"/x\"",
            ),
            "tenants[acme].client_secret",
        ),
        (
            TWO.replace(
                "client_secret = \"fake-acme-secret\"",
                "client_secret_file = \"/nonexistent/tv-secret\"",
            ),
            "tenants[acme].client_secret_file",
        ),
        (
            TWO.replace("http://127.0.0.1:9/", "http://auth.example.test"),
            "tenants[acme].auth_url",
        ),
        (
            TWO.replace("name = \"acme\"", "name = \"ac me\""),
            "tenants[1].name",
        ),
        (
            TWO.replace("name = \"acme\"", "nmae = \"acme\""),
            "tenants[1].name",
        ),
        (
            TWO.replace("auth_url", "auth_uri"),
            "tenants[acme].auth_uri",
        ),
        (
            TWO.replace("default_tenant = \"acme\"", "default_tenant = \"zeta\""),
            "DEFAULT_TENANT",
        ),
        (
            TWO.replace("default_tenant = \"acme\"", ""),
            "DEFAULT_TENANT",
        ),
        ("tenants = \"base\"".to_owned(), "tenants"),
    ];
    for (text, key) in cases {
        let err = tenants_toml(&text).unwrap_err();
        assert_eq!(err.setting, key, "{err}\n{text}");
    }
    // Without [[tenants]] and CORTI_*, the old first gap is still named.
    let err = tenants_toml("").unwrap_err();
    assert_eq!(err.setting, "CORTI_ENVIRONMENT", "{err}");
}

#[test]
fn a_secret_file_is_remembered_so_it_can_be_re_read() {
    let dir = std::env::temp_dir().join(format!("tv-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("acme");
    std::fs::write(&path, "fake-acme-from-file\n").unwrap();
    let text = TWO.replace(
        "client_secret = \"fake-acme-secret\"",
        &format!("client_secret_file = \"{}\"", path.display()),
    );
    let s = tenants_toml(&text).unwrap();
    assert_eq!(
        s.corti().client_secret.expose_secret(),
        "fake-acme-from-file"
    );
    assert_eq!(
        s.corti().client_secret_file.as_deref(),
        Some(path.as_path())
    );
    assert_eq!(
        s.corti().client_secret_setting,
        "tenants[acme].client_secret_file"
    );
    let mut pairs = complete();
    pairs.retain(|(k, _)| *k != "CORTI_CLIENT_SECRET");
    pairs.push(("CORTI_CLIENT_SECRET_FILE", path.display().to_string()));
    let s = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap();
    assert_eq!(
        s.corti().client_secret_file.as_deref(),
        Some(path.as_path())
    );
    let s = ServeSettings::load(&Sources::from_pairs(complete())).unwrap();
    assert_eq!(s.corti().client_secret_file, None);
    std::fs::write(&path, "\n").unwrap();
    let err = tenants_toml(&text).unwrap_err();
    assert_eq!(err.setting, "tenants[acme].client_secret_file", "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_duration_syntax_and_settings_also_take_bare_seconds() {
    assert_eq!(parse_duration("800ms"), Ok(Duration::from_millis(800)));
    assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert!(parse_duration("90").is_err(), "a CLI duration needs a unit");
    assert_eq!(setting_duration("90"), Ok(Duration::from_secs(90)));
    assert_eq!(setting_duration(" 5s "), Ok(Duration::from_secs(5)));
}

#[test]
fn check_config_never_shows_a_secret_or_the_userinfo_of_a_url() {
    let s = Settings::load(&Sources::from_pairs([
        ("CORTI_AUTH_URL", "https://fake-user-a@auth.example.test"),
        ("CORTI_API_URL", "wss://fake-user-b@api.example.test"),
        (
            "SESSION_JWKS_URL",
            "https://fake-user-c@id.example.test/jwks",
        ),
        (
            "SESSION_INTROSPECTION_URL",
            "https://fake-user-d@id.example.test/introspect",
        ),
        ("DATABASE_URL", "postgres://fake-user-e:pw@db.internal/tv"),
        ("REDIS_URL", "redis://fake-user-f:pw@cache.internal:6379"),
        ("SESSION_JWT_SECRET", "fake-user-g"),
        ("AUDIT_HMAC_KEY", "fake-user-h"),
        ("TOKEN_CACHE_KEY", "fake-user-i"),
        ("CORTI_CLIENT_SECRET", "fake-user-j"),
    ]))
    .unwrap();
    let lines = s.redacted_lines().join("\n");
    assert!(!lines.contains("fake-user"), "{lines}");
    assert!(lines.contains("RATE_LIMIT_REDIS_URL=redis://redacted:redacted@cache.internal:6379"));
    // Each setting is listed once.
    let mut names: Vec<&str> = lines
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, _)| n)
        .collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "{lines}");
}

#[test]
fn an_unknown_toml_key_names_the_file_and_the_closest_key() {
    let err = Settings::load(
        &Sources::from_pairs_and_toml(Vec::<(String, String)>::new(), "upstream_timout = \"2s\"")
            .unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        err.problem,
        "unknown key `upstream_timout` in the TOML text; did you mean `upstream_timeout`?"
    );
    // The `_file` form of a setting read from files is a key too.
    let dir = std::env::temp_dir().join(format!("tv-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key");
    std::fs::write(&path, "fake-audit-key-0123\n").unwrap();
    let text = format!("audit_hmac_key_file = \"{}\"", path.display());
    let empty = Vec::<(String, String)>::new();
    assert!(Settings::load(&Sources::from_pairs_and_toml(empty, &text).unwrap()).is_ok());
    // Far from every key: no guess.
    let err = Settings::load(
        &Sources::from_pairs_and_toml(Vec::<(String, String)>::new(), "colour = \"blue\"").unwrap(),
    )
    .unwrap_err();
    assert!(err.problem.starts_with("unknown key `colour`"), "{err}");
    assert!(!err.problem.contains("did you mean"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_variables_of_our_prefixes_are_warnings_naming_the_closest_setting() {
    let s = Settings::load(&Sources::from_pairs([
        ("SESSION_JWT_SECRT", "x"),
        ("AUDIT_HMAC_KEY_FILE_", "x"),
        ("CORTI_CLIENT_SECRET_FILE_PATH", "x"),
        ("UPSTREAM_TIMEOUT", "5s"),
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("OTEL_SERVICE_NAME", "tv"),
    ]))
    .unwrap();
    let warnings = s.warnings();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.contains(
        &"unknown variable SESSION_JWT_SECRT; did you mean SESSION_JWT_SECRET?".to_owned()
    ));
    assert!(warnings.contains(
        &"unknown variable AUDIT_HMAC_KEY_FILE_; did you mean AUDIT_HMAC_KEY_FILE?".to_owned()
    ));
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("unknown variable CORTI_CLIENT_SECRET_FILE_PATH")),
        "{warnings:?}"
    );
}

#[test]
fn edit_distance_counts_single_character_edits() {
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(
        edit_distance("rate_limit_per_usr", "rate_limit_per_user"),
        1
    );
    assert_eq!(edit_distance("same", "same"), 0);
}

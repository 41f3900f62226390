//! Names that are not settings: an unknown key in the TOML file is an error, an unknown
//! variable with one of our prefixes a warning (other software may share the
//! environment); each names the closest known setting.

/// Variables starting with these are ours; so are those starting with a setting's name
/// (`DATABASE_URL_FIEL`).
const PREFIXES: [&str; 9] = [
    "CORTI_",
    "SESSION_",
    "AUDIT_",
    "RATE_LIMIT_",
    "RELAY_",
    "TOKEN_",
    "UPSTREAM_",
    "DENY_",
    "DEV_",
];

/// Levenshtein distance: the fewest single-character insertions, deletions and
/// substitutions that turn `a` into `b`.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The known name closest to `name`, when it is close enough to be a likely typo.
pub(super) fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let (distance, best) = known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .min()?;
    (distance <= 2.max(name.chars().count() / 4)).then_some(best)
}

/// "; did you mean `x`?" with `quote` around the name, or nothing.
fn did_you_mean(best: Option<&str>, quote: &str) -> String {
    best.map(|b| format!("; did you mean {quote}{b}{quote}?"))
        .unwrap_or_default()
}

/// The problem with an unknown key of the TOML file (`origin` names the file).
pub(super) fn unknown_key<'a>(
    key: &str,
    origin: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> String {
    format!(
        "unknown key `{key}` in {origin}{}",
        did_you_mean(closest(key, known), "`")
    )
}

/// A warning for each variable that looks like ours but is no setting, sorted.
pub(super) fn unknown_variables<'a>(
    variables: impl IntoIterator<Item = &'a String>,
    known: &[String],
) -> Vec<String> {
    let is_ours = |name: &str| {
        PREFIXES.iter().any(|p| name.starts_with(p))
            || known
                .iter()
                .any(|k| name.len() > k.len() && name.starts_with(k.as_str()))
    };
    let mut warnings: Vec<String> = variables
        .into_iter()
        .filter(|name| !known.contains(name) && is_ours(name))
        .map(|name| {
            let best = closest(name, known.iter().map(String::as_str));
            match best {
                Some(_) => format!("unknown variable {name}{}", did_you_mean(best, "")),
                None => format!("unknown variable {name}; it is no setting of token-vendor"),
            }
        })
        .collect();
    warnings.sort();
    warnings
}

//! `${NAME}` expansion: every string scalar of the YAML tree, before it is deserialized, so
//! secrets (client secrets, Redis passwords) come from the environment. An unset variable is an
//! error naming the key; `$${` writes a literal `${`.

use serde_norway::Value;

use super::Errors;

/// Replaces `${NAME}` in every string scalar; unset variables are errors naming the key.
pub(super) fn expand_env(
    v: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) {
    match v {
        Value::String(s) if s.contains('$') => match expand_str(s, env) {
            Ok(x) => *s = x,
            Err(m) => errs.push(path, m),
        },
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let name = k.as_str().unwrap_or("?");
                let p = if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                };
                expand_env(val, &p, env, errs);
            }
        }
        Value::Sequence(seq) => {
            for (i, val) in seq.iter_mut().enumerate() {
                expand_env(val, &format!("{path}[{i}]"), env, errs);
            }
        }
        _ => {}
    }
}

pub(super) fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = after.strip_prefix("${") {
            let end = r
                .find('}')
                .ok_or_else(|| "`${` without a closing `}`".to_string())?;
            let name = &r[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                ));
            }
            match env(name) {
                Some(val) => out.push_str(&val),
                None => return Err(format!("environment variable {name} is not set")),
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

//! The `ui:` section: branding, languages, scope descriptions and operator templates for the
//! verification pages.
//!
//! Everything an operator can get wrong here is found at start-up (and by `--check`): colours
//! are hex and must keep WCAG AA contrast, logo URLs must be https (or a path on this origin),
//! templates in `templates_dir` must compile, and locale files may only use known keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Errors;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileUi {
    title: Option<String>,
    logo_url: Option<String>,
    colors: FileColors,
    default_language: Option<String>,
    templates_dir: Option<String>,
    scopes: BTreeMap<String, ScopeText>,
    education: Option<ScopeText>,
    report_text: Option<ScopeText>,
    report_url: Option<ScopeText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileColors {
    accent: Option<String>,
    background: Option<String>,
    text: Option<String>,
}

/// A scope description: one text for every language, or one per language code.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ScopeText {
    All(String),
    PerLanguage(BTreeMap<String, String>),
}

/// The page colours, `#rrggbb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Colors {
    pub accent: String,
    pub background: String,
    pub text: String,
}

impl Default for Colors {
    fn default() -> Self {
        Self {
            accent: "#1f5fbf".into(),
            background: "#ffffff".into(),
            text: "#1a1a1a".into(),
        }
    }
}

/// Colours the templates use that operators cannot change (error and warning accents): the
/// background must keep them readable too.
const FIXED_COLORS: &[(&str, &str)] = &[
    ("the error red", "#a4262c"),
    ("the success green", "#1d7a3a"),
];

/// The validated `ui:` section.
#[derive(Debug, Clone, Default)]
pub struct Ui {
    /// Shown at the top of every page and in the window title (default: none, the page heading
    /// stands alone).
    pub title: Option<String>,
    /// Shown at the top of every page.
    pub logo_url: Option<String>,
    pub colors: Colors,
    /// Language when `Accept-Language` names none the gateway has.
    pub default_language: String,
    /// Extra or replaced scope descriptions.
    pub scopes: BTreeMap<String, ScopeText>,
    pub templates_dir: Option<PathBuf>,
    /// `*.html` files read from `templates_dir`: (file name, source).
    pub templates: Vec<(String, String)>,
    /// `locales/<lang>.yaml` files read from `templates_dir`: language → key → text.
    pub locales: BTreeMap<String, BTreeMap<String, String>>,
    /// The user-education line of the code-entry and consent pages (RFC 10027), replacing the
    /// built-in one: for every language, or per language.
    pub education: Option<ScopeText>,
    /// What to do next, on the page after "Deny — I did not start this".
    pub report_text: Option<ScopeText>,
    /// Where that page links to report the attempt (a security team's form).
    pub report_url: Option<ScopeText>,
}

/// Largest template or locale file read from `templates_dir`.
const MAX_FILE_BYTES: u64 = 256 * 1024;

pub(super) fn validate_ui(errs: &mut Errors, f: FileUi, public_url: Option<&url::Url>) -> Ui {
    let mut ui = Ui {
        title: f.title.filter(|t| !t.trim().is_empty()),
        default_language: f.default_language.unwrap_or_else(|| "en".into()),
        scopes: f.scopes,
        ..Ui::default()
    };
    if ui.title.as_ref().is_some_and(|t| t.chars().count() > 80) {
        errs.push("ui.title", "is longer than 80 characters");
    }
    if let Some(logo) = f.logo_url {
        ui.logo_url = check_image_url(errs, "ui.logo_url", &logo, public_url);
    }
    ui.colors = validate_colors(errs, f.colors);
    for (scope, text) in &ui.scopes {
        let texts: Vec<&String> = match text {
            ScopeText::All(t) => vec![t],
            ScopeText::PerLanguage(m) => {
                for lang in m.keys() {
                    if !is_language(lang) {
                        errs.push(
                            &format!("ui.scopes.{scope}.{lang}"),
                            "is not a language code (two or three lowercase letters, e.g. de)",
                        );
                    }
                }
                m.values().collect()
            }
        };
        if texts.iter().any(|t| t.trim().is_empty() || t.len() > 200) {
            errs.push(
                &format!("ui.scopes.{scope}"),
                "descriptions must be 1 to 200 characters",
            );
        }
    }
    for (key, text) in [
        ("ui.education", &f.education),
        ("ui.report_text", &f.report_text),
    ] {
        if let Some(text) = text {
            check_localized(errs, key, text, |t| {
                (!t.trim().is_empty() && t.chars().count() <= 300)
                    .then_some(())
                    .ok_or_else(|| "must be 1 to 300 characters".to_string())
            });
        }
    }
    if let Some(url) = &f.report_url {
        check_localized(errs, "ui.report_url", url, |u| {
            let path = u.starts_with('/') && !u.starts_with("//") && !u.contains(['"', ' ']);
            let https = url::Url::parse(u).is_ok_and(|u| {
                matches!(u.scheme(), "https" | "mailto")
                    || (u.scheme() == "http" && public_url.is_some_and(|p| p.scheme() == "http"))
            });
            (path || https).then_some(()).ok_or_else(|| {
                format!("'{u}' must be an https:// or mailto: URL, or a path on this origin")
            })
        });
    }
    ui.education = f.education;
    ui.report_text = f.report_text;
    ui.report_url = f.report_url;
    if let Some(dir) = f.templates_dir {
        let dir = PathBuf::from(dir);
        read_templates_dir(errs, &dir, &mut ui);
        ui.templates_dir = Some(dir);
    }
    ui
}

/// A logo: an https URL (http only when `public_url` is http, for local testing), an absolute
/// path on the gateway's origin (served by the IdP through the gateway), or a `data:image/…`
/// URL (images cannot run scripts, and the pages' CSP allows `data:` images).
/// Checks a text given for every language or per language code.
fn check_localized(
    errs: &mut Errors,
    key: &str,
    text: &ScopeText,
    check: impl Fn(&str) -> Result<(), String>,
) {
    match text {
        ScopeText::All(t) => {
            if let Err(e) = check(t) {
                errs.push(key, e);
            }
        }
        ScopeText::PerLanguage(m) => {
            if m.is_empty() {
                errs.push(
                    key,
                    "names no language: give a text, or one per language code",
                );
            }
            for (lang, t) in m {
                let k = format!("{key}.{lang}");
                if !is_language(lang) {
                    errs.push(
                        &k,
                        "is not a language code (two or three lowercase letters, e.g. de)",
                    );
                } else if let Err(e) = check(t) {
                    errs.push(&k, e);
                }
            }
        }
    }
}

impl ScopeText {
    /// The text for `lang`: the one for every language, or `lang`'s own.
    pub fn for_language(&self, lang: &str) -> Option<&str> {
        match self {
            Self::All(t) => Some(t),
            Self::PerLanguage(m) => m.get(lang).map(String::as_str),
        }
    }
}

pub(super) fn check_image_url(
    errs: &mut Errors,
    key: &str,
    s: &str,
    public_url: Option<&url::Url>,
) -> Option<String> {
    if s.starts_with('/') && !s.starts_with("//") {
        if s.chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'')
        {
            errs.push(key, "must not contain spaces or quotes");
            return None;
        }
        return Some(s.to_string());
    }
    if let Some(data) = s.strip_prefix("data:image/") {
        let ok = s.len() <= 64 * 1024
            && ["png", "svg+xml", "jpeg", "gif", "webp"]
                .iter()
                .any(|t| data.starts_with(&format!("{t};")) || data.starts_with(&format!("{t},")))
            && !s.contains(char::is_whitespace);
        if ok {
            return Some(s.to_string());
        }
        errs.push(
            key,
            "a data: logo must be a png, svg+xml, jpeg, gif or webp image of at most 64 KiB, URL-encoded (no spaces)",
        );
        return None;
    }
    match url::Url::parse(s) {
        Ok(u) if u.scheme() == "https" && u.host_str().is_some() => Some(u.to_string()),
        Ok(u)
            if u.scheme() == "http"
                && u.host_str().is_some()
                && public_url.is_some_and(|p| p.scheme() == "http") =>
        {
            Some(u.to_string())
        }
        _ => {
            errs.push(
                key,
                format!("'{s}' must be an https:// URL, a path starting with / on this origin, or a data:image/ URL"),
            );
            None
        }
    }
}

fn validate_colors(errs: &mut Errors, f: FileColors) -> Colors {
    let defaults = Colors::default();
    let mut pick = |key: &str, v: Option<String>, default: String| match v {
        None => default,
        Some(v) => match parse_hex(&v) {
            Some(rgb) => format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]),
            None => {
                errs.push(key, format!("'{v}' is not a colour like #1f5fbf or #fff"));
                default
            }
        },
    };
    let c = Colors {
        accent: pick("ui.colors.accent", f.accent, defaults.accent),
        background: pick("ui.colors.background", f.background, defaults.background),
        text: pick("ui.colors.text", f.text, defaults.text),
    };
    // WCAG 2.1 AA: 4.5:1 for normal text. Buttons are white text on the accent; links and
    // focus rings are the accent on the background.
    let mut pairs = vec![
        (
            "ui.colors.accent",
            "the white button text",
            c.accent.as_str(),
            "#ffffff",
        ),
        (
            "ui.colors.accent",
            "ui.colors.background",
            c.accent.as_str(),
            c.background.as_str(),
        ),
        (
            "ui.colors.text",
            "ui.colors.background",
            c.text.as_str(),
            c.background.as_str(),
        ),
    ];
    for (name, color) in FIXED_COLORS {
        pairs.push(("ui.colors.background", name, c.background.as_str(), color));
    }
    for (key, other, a, b) in pairs {
        let ratio = contrast(a, b);
        if ratio < 4.5 {
            errs.push(
                key,
                format!(
                    "{a} against {other} ({b}) has a contrast of {ratio:.1}:1; WCAG AA needs 4.5:1"
                ),
            );
        }
    }
    c
}

fn parse_hex(s: &str) -> Option<[u8; 3]> {
    let h = s.strip_prefix('#')?;
    if !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |i: usize, n: usize| u8::from_str_radix(&h[i..i + n], 16).ok();
    match h.len() {
        3 => Some([digit(0, 1)? * 17, digit(1, 1)? * 17, digit(2, 1)? * 17]),
        6 => Some([digit(0, 2)?, digit(2, 2)?, digit(4, 2)?]),
        _ => None,
    }
}

/// WCAG 2.1 contrast ratio of two hex colours.
pub fn contrast(a: &str, b: &str) -> f64 {
    let lum = |s: &str| {
        let rgb = parse_hex(s).unwrap_or([0, 0, 0]);
        let ch = |v: u8| {
            let c = f64::from(v) / 255.0;
            if c <= 0.039_28 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * ch(rgb[0]) + 0.7152 * ch(rgb[1]) + 0.0722 * ch(rgb[2])
    };
    let (x, y) = (lum(a), lum(b));
    let (hi, lo) = if x > y { (x, y) } else { (y, x) };
    (hi + 0.05) / (lo + 0.05)
}

/// A primary language subtag: two or three lowercase ASCII letters.
pub fn is_language(s: &str) -> bool {
    (2..=3).contains(&s.len()) && s.chars().all(|c| c.is_ascii_lowercase())
}

fn read_small(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

fn read_templates_dir(errs: &mut Errors, dir: &Path, ui: &mut Ui) {
    let key = "ui.templates_dir";
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errs.push(key, format!("cannot read {}: {e}", dir.display()));
            return;
        }
    };
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for path in names {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if name.ends_with(".html") {
            match read_small(&path) {
                Ok(src) => ui.templates.push((name, src)),
                Err(e) => errs.push(key, format!("{}: {e}", path.display())),
            }
        }
    }
    let locales = dir.join("locales");
    let Ok(entries) = std::fs::read_dir(&locales) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files {
        let Some(lang) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".yaml"))
        else {
            continue;
        };
        if !is_language(lang) {
            errs.push(
                key,
                format!(
                    "{}: locale files are named <language>.yaml with a two- or three-letter code, e.g. de.yaml",
                    path.display()
                ),
            );
            continue;
        }
        let parsed = read_small(&path).and_then(|text| {
            serde_norway::from_str::<BTreeMap<String, String>>(&text)
                .map_err(|e| format!("must map message keys to texts: {e}"))
        });
        match parsed {
            Ok(map) => {
                ui.locales.insert(lang.to_string(), map);
            }
            Err(e) => errs.push(key, format!("{}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrast_matches_wcag_examples() {
        assert!((contrast("#000", "#fff") - 21.0).abs() < 0.01);
        assert!((contrast("#fff", "#fff") - 1.0).abs() < 0.01);
        // The default accent passes against white both ways it is used.
        assert!(contrast("#1f5fbf", "#ffffff") >= 4.5);
        assert!(contrast("#777777", "#ffffff") < 4.5);
    }

    #[test]
    fn colours_are_checked() {
        let mut errs = Errors::default();
        let c = validate_colors(
            &mut errs,
            FileColors {
                accent: Some("#FC0".into()),
                background: Some("blue".into()),
                text: None,
            },
        );
        assert_eq!(c.accent, "#ffcc00");
        let text: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("ui.colors.background") && e.contains("'blue'")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.contains("ui.colors.accent") && e.contains("white button text")),
            "{text:?}"
        );
    }
}

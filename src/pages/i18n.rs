//! Page languages: message catalogues (`locales/*.yaml`, compiled in) merged with an operator's
//! `<templates_dir>/locales/<lang>.yaml`, and the choice of one from `Accept-Language`
//! (RFC 9110 §12.5.4, matching on the primary subtag).

use std::collections::BTreeMap;

use crate::config::Ui;

/// The built-in catalogues. English is the reference: every key exists there.
const BUILT_IN: &[(&str, &str)] = &[
    ("en", include_str!("locales/en.yaml")),
    ("de", include_str!("locales/de.yaml")),
    ("fr", include_str!("locales/fr.yaml")),
    ("es", include_str!("locales/es.yaml")),
    ("it", include_str!("locales/it.yaml")),
    ("nl", include_str!("locales/nl.yaml")),
    ("pt", include_str!("locales/pt.yaml")),
    ("pl", include_str!("locales/pl.yaml")),
    ("ja", include_str!("locales/ja.yaml")),
    ("zh", include_str!("locales/zh.yaml")),
    ("ar", include_str!("locales/ar.yaml")),
];

/// The messages of one language.
#[derive(Debug)]
pub struct Catalog {
    pub lang: String,
    texts: BTreeMap<String, String>,
    /// `texts` as a template value (built once; cloning it is cheap).
    pub value: minijinja::Value,
}

impl Catalog {
    fn new(lang: &str, texts: BTreeMap<String, String>) -> Self {
        let value = minijinja::Value::from_serialize(&texts);
        Self {
            lang: lang.to_string(),
            texts,
            value,
        }
    }

    /// The text for `key` (the key itself if a custom template asks for one that is missing).
    pub fn get<'a>(&'a self, key: &'a str) -> &'a str {
        self.texts.get(key).map_or(key, String::as_str)
    }

    /// The text for `key` with `{name}` placeholders filled.
    pub fn fill(&self, key: &str, args: &[(&str, &str)]) -> String {
        let mut s = self.get(key).to_string();
        for (name, value) in args {
            s = s.replace(&format!("{{{name}}}"), value);
        }
        s
    }

    /// A scope in plain words, if this catalogue has words for it.
    pub fn scope(&self, scope: &str) -> Option<&str> {
        self.texts
            .get(&format!("scope_{scope}"))
            .map(String::as_str)
    }
}

/// Every language the pages can be shown in.
#[derive(Debug)]
pub struct Catalogs {
    list: Vec<Catalog>,
    default: usize,
}

fn parse(lang: &str, text: &str) -> Result<BTreeMap<String, String>, String> {
    serde_norway::from_str(text).map_err(|e| format!("built-in locale {lang}: {e}"))
}

impl Catalogs {
    /// Built-in catalogues with the operator's files laid over them. A language only the
    /// operator has falls back to English for keys it lacks. Unknown keys are refused (a typo
    /// would otherwise silently show the default), except `scope_*` and `x_*` ones.
    pub fn load(ui: &Ui) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut base: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (lang, text) in BUILT_IN {
            base.insert((*lang).to_string(), parse(lang, text).map_err(|e| vec![e])?);
        }
        let english = base.get("en").cloned().unwrap_or_default();
        for (lang, overrides) in &ui.locales {
            for key in overrides.keys() {
                if !english.contains_key(key)
                    && !key.starts_with("scope_")
                    && !key.starts_with("x_")
                {
                    errors.push(format!(
                        "locales/{lang}.yaml: unknown message key '{key}' (custom keys start with x_)"
                    ));
                }
            }
            let entry = base.entry(lang.clone()).or_insert_with(|| english.clone());
            entry.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (lang, texts) in &base {
            if !matches!(
                texts.get("direction").map(String::as_str),
                Some("ltr" | "rtl")
            ) {
                errors.push(format!("locales/{lang}.yaml: direction must be ltr or rtl"));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let list: Vec<Catalog> = base
            .iter()
            .map(|(l, t)| Catalog::new(l, t.clone()))
            .collect();
        let Some(default) = list.iter().position(|c| c.lang == ui.default_language) else {
            return Err(vec![format!(
                "ui.default_language: '{}' has no messages; available: {}",
                ui.default_language,
                base.keys().cloned().collect::<Vec<_>>().join(", ")
            )]);
        };
        Ok(Self { list, default })
    }

    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|c| c.lang.as_str())
    }

    pub fn default_catalog(&self) -> &Catalog {
        &self.list[self.default]
    }

    /// The best catalogue for an `Accept-Language` header: highest `q` first, then header
    /// order; `de-CH` matches `de`; `*` and no match give the default language.
    pub fn negotiate(&self, accept_language: Option<&str>) -> &Catalog {
        let Some(header) = accept_language else {
            return self.default_catalog();
        };
        let mut ranges: Vec<(u16, usize, &str)> = header
            .split(',')
            .take(16)
            .enumerate()
            .filter_map(|(i, part)| {
                let mut pieces = part.split(';');
                let tag = pieces.next()?.trim();
                let q =
                    pieces
                        .find_map(|p| p.trim().strip_prefix("q="))
                        .map_or(Some(1000), |q| {
                            q.trim()
                                .parse::<f32>()
                                .ok()
                                .filter(|q| (0.0..=1.0).contains(q))
                                .map(|q| (q * 1000.0) as u16)
                        })?;
                (q > 0 && !tag.is_empty()).then_some((q, i, tag))
            })
            .collect();
        ranges.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, tag) in ranges {
            if tag == "*" {
                return self.default_catalog();
            }
            let primary = tag.split('-').next().unwrap_or(tag).to_ascii_lowercase();
            if let Some(c) = self.list.iter().find(|c| c.lang == primary) {
                return c;
            }
        }
        self.default_catalog()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders(s: &str) -> Vec<&str> {
        let mut out: Vec<&str> = s
            .match_indices('{')
            .filter_map(|(i, _)| s[i..].find('}').map(|j| &s[i..i + j + 1]))
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn every_language_has_every_key_with_the_same_placeholders() {
        let en = parse("en", BUILT_IN[0].1).unwrap();
        for (lang, text) in BUILT_IN {
            let other = parse(lang, text).unwrap();
            assert_eq!(
                other.keys().collect::<Vec<_>>(),
                en.keys().collect::<Vec<_>>(),
                "{lang} keys differ from en"
            );
            for (k, v) in &en {
                assert_eq!(placeholders(&other[k]), placeholders(v), "{lang}.{k}");
                assert!(!other[k].trim().is_empty(), "{lang}.{k} is empty");
            }
        }
    }

    #[test]
    fn negotiation() {
        let c = Catalogs::load(&Ui {
            default_language: "en".into(),
            ..Ui::default()
        })
        .unwrap();
        let pick = |h: Option<&str>| c.negotiate(h).lang.clone();
        assert_eq!(pick(None), "en");
        assert_eq!(pick(Some("de-CH,de;q=0.9,en;q=0.8")), "de");
        assert_eq!(pick(Some("sv, fr;q=0.5, de;q=0.7")), "de");
        assert_eq!(pick(Some("FR-ca")), "fr");
        assert_eq!(pick(Some("de;q=0, fr;q=0.1")), "fr");
        assert_eq!(pick(Some("sv, *;q=0.5")), "en");
        assert_eq!(pick(Some("ar-EG")), "ar");
        assert_eq!(c.negotiate(Some("ar")).get("direction"), "rtl");
        assert_eq!(c.negotiate(Some("ja")).get("direction"), "ltr");
        assert_eq!(pick(Some("garbage;q=x,,;;")), "en");
        assert_eq!(
            c.negotiate(Some("de")).fill("ago_seconds", &[("n", "40")]),
            "vor 40 Sekunden"
        );
    }

    #[test]
    fn operator_locales_override_and_add_languages_and_refuse_typos() {
        let mut ui = Ui {
            default_language: "sv".into(),
            ..Ui::default()
        };
        ui.locales.insert(
            "sv".into(),
            BTreeMap::from([("enter_button".to_string(), "Continuar".to_string())]),
        );
        ui.locales.insert(
            "de".into(),
            BTreeMap::from([("enter_button".to_string(), "Los".to_string())]),
        );
        let c = Catalogs::load(&ui).unwrap();
        assert_eq!(c.default_catalog().get("enter_button"), "Continuar");
        // Missing keys of a new language fall back to English.
        assert_eq!(c.default_catalog().get("enter_label"), "Code");
        assert_eq!(c.negotiate(Some("de")).get("enter_button"), "Los");
        assert_eq!(c.negotiate(Some("de")).get("enter_label"), "Code");
        assert!(c.languages().any(|l| l == "sv"));

        ui.locales.insert(
            "fr".into(),
            BTreeMap::from([("enter_buton".to_string(), "x".to_string())]),
        );
        let errs = Catalogs::load(&ui).unwrap_err();
        assert!(
            errs[0].contains("locales/fr.yaml") && errs[0].contains("enter_buton"),
            "{errs:?}"
        );
        // A writing direction is ltr or rtl (an operator adding Hebrew says rtl).
        ui.locales.insert(
            "fr".into(),
            BTreeMap::from([("direction".to_string(), "up".to_string())]),
        );
        let errs = Catalogs::load(&ui).unwrap_err();
        assert!(errs[0].contains("locales/fr.yaml") && errs[0].contains("direction"));
        ui.locales.clear();
        ui.default_language = "sv".into();
        assert!(Catalogs::load(&ui).unwrap_err()[0].contains("ui.default_language"));
    }
}

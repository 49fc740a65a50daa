//! Which modules an adapter applies to, by peft's rules.

use crate::lora::config::{LayerIndexes, TargetModules};
use regex::Regex;

/// Whether `path` is a target: a string is a regular expression that must match the whole path
/// (`all-linear`: any linear); a list matches a path equal to an entry or ending with `.entry`.
pub fn matches(targets: &TargetModules, path: &str) -> bool {
    match targets {
        TargetModules::Regex(r) if r == "all-linear" => true,
        TargetModules::Regex(r) => {
            Regex::new(&format!("^(?:{r})$")).is_ok_and(|re| re.is_match(path))
        }
        TargetModules::List(names) => names
            .iter()
            .any(|n| path == n || path.ends_with(&format!(".{n}"))),
    }
}

/// The layer index of a module path (`transformer.h.3.attn.c_attn` → 3): with a pattern, the
/// number after `.{pattern}.`; without, the number of the last `name.N.` segment (peft's rule).
pub fn layer_index(path: &str, pattern: Option<&TargetModules>) -> Option<usize> {
    let patterns: Vec<String> = match pattern {
        None => vec![r".*\.[^.]*\.(\d+)\.".into()],
        Some(TargetModules::Regex(p)) => vec![format!(r".*\.{p}\.(\d+)\.")],
        Some(TargetModules::List(ps)) => ps.iter().map(|p| format!(r".*\.{p}\.(\d+)\.")).collect(),
    };
    patterns.iter().find_map(|p| {
        Regex::new(&format!("^{p}"))
            .ok()?
            .captures(path)?
            .get(1)?
            .as_str()
            .parse()
            .ok()
    })
}

/// peft's default targets of a method for a `model_type` (its
/// `TRANSFORMERS_MODELS_TO_{LORA,ADALORA,IA3}_TARGET_MODULES_MAPPING`, and IA³'s
/// `…_FEEDFORWARD_MODULES_MAPPING` as the second list, for the models peftkit has), used when a
/// config names none. `None` where peft has no default (it then asks for `target_modules`).
pub fn default_targets(
    model_type: &str,
    method: &str,
) -> Option<(Vec<&'static str>, Vec<&'static str>)> {
    Some(match (method, model_type) {
        ("LORA" | "ADALORA", "gpt2") => (vec!["c_attn"], vec![]),
        ("LORA" | "ADALORA", "bert") | ("LORA", "roberta") => (vec!["query", "value"], vec![]),
        ("ADALORA", "roberta") => (vec!["query", "key", "value", "dense"], vec![]),
        ("LORA", "llama" | "mistral" | "qwen2") | ("ADALORA", "llama" | "qwen2") => {
            (vec!["q_proj", "v_proj"], vec![])
        }
        ("IA3", "gpt2") => (vec!["c_attn", "mlp.c_proj"], vec!["mlp.c_proj"]),
        ("IA3", "bert" | "roberta") => (vec!["key", "value", "output.dense"], vec!["output.dense"]),
        ("IA3", "llama" | "mistral") => (vec!["k_proj", "v_proj", "down_proj"], vec!["down_proj"]),
        ("IA3", "qwen2") => (vec!["q_proj", "v_proj", "down_proj"], vec!["down_proj"]),
        ("LORA", "deberta-v2") => (vec!["query_proj", "value_proj"], vec![]),
        ("ADALORA", "deberta-v2") => (
            vec!["query_proj", "key_proj", "value_proj", "dense"],
            vec![],
        ),
        ("IA3", "deberta-v2") => (
            vec!["key_proj", "value_proj", "output.dense"],
            vec!["output.dense"],
        ),
        _ => return None,
    })
}

fn list(v: &[&str]) -> TargetModules {
    TargetModules::List(v.iter().map(|s| s.to_string()).collect())
}

/// `target_modules`, or peft's default for the model when unset (recorded in the config, as
/// peft records it); an error for a model type peft has no default for.
pub fn targets_or_default(
    targets: &mut Option<TargetModules>,
    model_type: &str,
    method: &str,
) -> crate::Result<TargetModules> {
    if targets.is_none() {
        let (t, _) = default_targets(model_type, method).ok_or_else(|| {
            crate::AdapterError::Invalid(format!(
                "target_modules is not set and peft has no default for {method} on model_type `{model_type}`: set target_modules"
            ))
        })?;
        *targets = Some(list(&t));
    }
    Ok(targets.clone().expect("set above"))
}

/// IA³'s `feedforward_modules`, or peft's default for the model when unset.
pub fn feedforward_or_default(
    ff: &mut Option<TargetModules>,
    model_type: &str,
) -> crate::Result<TargetModules> {
    if ff.is_none() {
        let (_, f) = default_targets(model_type, "IA3").ok_or_else(|| {
            crate::AdapterError::Invalid(format!(
                "feedforward_modules is not set and peft has no default for model_type `{model_type}`: set feedforward_modules"
            ))
        })?;
        *ff = Some(list(&f));
    }
    Ok(ff.clone().expect("set above"))
}

/// Whether the module at `path` gets an adapter.
pub fn is_target(
    path: &str,
    targets: &TargetModules,
    exclude: Option<&TargetModules>,
    layers: Option<&LayerIndexes>,
    layers_pattern: Option<&TargetModules>,
    modules_to_save: &[String],
) -> bool {
    if modules_to_save
        .iter()
        .any(|m| path == m || path.starts_with(&format!("{m}.")))
    {
        return false;
    }
    if exclude.is_some_and(|e| matches(e, path)) || !matches(targets, path) {
        return false;
    }
    match layers {
        None => true,
        Some(l) => layer_index(path, layers_pattern).is_some_and(|i| l.contains(i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> TargetModules {
        TargetModules::List(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn suffix_and_regex_matching_like_peft() {
        let t = list(&["c_attn", "c_proj"]);
        assert!(matches(&t, "transformer.h.0.attn.c_attn"));
        assert!(matches(&t, "transformer.h.0.mlp.c_proj"));
        assert!(!matches(&t, "transformer.h.0.mlp.c_fc"));
        assert!(!matches(&list(&["attn"]), "transformer.h.0.attn.c_attn"));
        let r = TargetModules::Regex(r".*\.h\.[01]\.attn\.c_attn".into());
        assert!(matches(&r, "transformer.h.1.attn.c_attn"));
        assert!(!matches(&r, "transformer.h.2.attn.c_attn"));
        // a regex must match the whole path
        assert!(!matches(
            &TargetModules::Regex("c_attn".into()),
            "transformer.h.1.attn.c_attn"
        ));
    }

    #[test]
    fn layers_to_transform_and_modules_to_save() {
        assert_eq!(layer_index("transformer.h.3.attn.c_attn", None), Some(3));
        assert_eq!(
            layer_index("roberta.encoder.layer.11.attention.self.query", None),
            Some(11)
        );
        assert_eq!(layer_index("score", None), None);
        assert_eq!(
            layer_index(
                "transformer.h.3.attn.c_attn",
                Some(&TargetModules::Regex("h".into()))
            ),
            Some(3)
        );
        let t = list(&["query", "dense"]);
        let save = vec!["classifier".to_string()];
        let layers = LayerIndexes::Many(vec![0]);
        assert!(is_target(
            "roberta.encoder.layer.0.attention.self.query",
            &t,
            None,
            Some(&layers),
            None,
            &save
        ));
        assert!(!is_target(
            "roberta.encoder.layer.1.attention.self.query",
            &t,
            None,
            Some(&layers),
            None,
            &save
        ));
        assert!(!is_target("classifier.dense", &t, None, None, None, &save));
        assert!(is_target("bert.pooler.dense", &t, None, None, None, &save));
        assert!(!is_target(
            "bert.pooler.dense",
            &t,
            Some(&list(&["pooler.dense"])),
            None,
            None,
            &save
        ));
    }
}

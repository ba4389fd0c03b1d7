//! A small JSON Schema validator for plug-in configs: the subset plug-ins declare in practice.
//!
//! Checked keywords: boolean schemas, `type` (a name or a list; `integer` is a number without a
//! fraction), `enum`, `const`, `properties`, `required`, `additionalProperties` (boolean or a
//! schema), `minProperties`/`maxProperties`, `items` (one schema for every element),
//! `minItems`/`maxItems`, `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum` (numbers),
//! `minLength`/`maxLength` (in characters), `allOf`, `anyOf`, `oneOf` and `not`.
//!
//! Everything else (`$ref`, `pattern`, `format`, `if`/`then`, …) is ignored rather than guessed
//! at: the plug-in still checks its config in `initialize` and fails its handshake on a config it
//! cannot use. The `jsonschema` crate would cover all of it, but it brings in a second `syn`, a
//! big-number stack and a newer `serde_json`; this file is the trade-off, written down.

use serde_json::{Map, Value};

/// The first violation found: where (a path like `config.limits[2].max`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) path: String,
    pub(crate) reason: String,
}

/// Checks `instance` against `schema`; `path` names the instance's root in messages.
pub(crate) fn validate(schema: &Value, instance: &Value, path: &str) -> Result<(), Violation> {
    match schema {
        Value::Bool(true) => Ok(()),
        Value::Bool(false) => Err(violation(path, "no value is allowed here")),
        Value::Object(s) => check_object_schema(s, instance, path),
        // A malformed schema is the plug-in's bug; it must not block every config change.
        _ => Ok(()),
    }
}

fn violation(path: &str, reason: impl Into<String>) -> Violation {
    Violation { path: path.to_owned(), reason: reason.into() }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if is_integer(n) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn has_type(v: &Value, name: &str) -> bool {
    match name {
        "number" => v.is_number(),
        "integer" => v.as_number().is_some_and(is_integer),
        other => type_name(v) == other,
    }
}

fn check_object_schema(s: &Map<String, Value>, v: &Value, path: &str) -> Result<(), Violation> {
    if let Some(t) = s.get("type") {
        let names: Vec<&str> = match t {
            Value::String(name) => vec![name.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !names.is_empty() && !names.iter().any(|n| has_type(v, n)) {
            return Err(violation(path, format!("must be of type {}, got {}", names.join(" or "), type_name(v))));
        }
    }
    if let Some(Value::Array(allowed)) = s.get("enum")
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        return Err(violation(path, format!("must be one of {}", list.join(", "))));
    }
    if let Some(expected) = s.get("const")
        && expected != v
    {
        return Err(violation(path, format!("must be {expected}")));
    }
    match v {
        Value::Object(map) => check_properties(s, map, path)?,
        Value::Array(items) => check_items(s, items, path)?,
        Value::Number(n) => check_number(s, n, path)?,
        Value::String(text) => check_string(s, text, path)?,
        _ => {}
    }
    check_combinators(s, v, path)
}

fn check_properties(s: &Map<String, Value>, map: &Map<String, Value>, path: &str) -> Result<(), Violation> {
    if let Some(Value::Array(required)) = s.get("required") {
        for key in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(key) {
                return Err(violation(&format!("{path}.{key}"), "is required"));
            }
        }
    }
    let props = s.get("properties").and_then(Value::as_object);
    for (key, value) in map {
        let child = format!("{path}.{key}");
        match props.and_then(|p| p.get(key)) {
            Some(sub) => validate(sub, value, &child)?,
            None => match s.get("additionalProperties") {
                Some(Value::Bool(false)) => return Err(violation(&child, "unknown field")),
                Some(sub @ Value::Object(_)) => validate(sub, value, &child)?,
                _ => {}
            },
        }
    }
    let count = map.len() as u64;
    if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
        && count < min
    {
        return Err(violation(path, format!("needs at least {min} fields")));
    }
    if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
        && count > max
    {
        return Err(violation(path, format!("allows at most {max} fields")));
    }
    Ok(())
}

fn check_items(s: &Map<String, Value>, items: &[Value], path: &str) -> Result<(), Violation> {
    if let Some(sub @ (Value::Object(_) | Value::Bool(_))) = s.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate(sub, item, &format!("{path}[{i}]"))?;
        }
    }
    let count = items.len() as u64;
    if let Some(min) = s.get("minItems").and_then(Value::as_u64)
        && count < min
    {
        return Err(violation(path, format!("needs at least {min} items")));
    }
    if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
        && count > max
    {
        return Err(violation(path, format!("allows at most {max} items")));
    }
    Ok(())
}

fn check_number(s: &Map<String, Value>, n: &serde_json::Number, path: &str) -> Result<(), Violation> {
    let Some(x) = n.as_f64() else { return Ok(()) };
    let bound = |key: &str| s.get(key).and_then(Value::as_f64);
    if let Some(min) = bound("minimum")
        && x < min
    {
        return Err(violation(path, format!("must be at least {min}, got {n}")));
    }
    if let Some(max) = bound("maximum")
        && x > max
    {
        return Err(violation(path, format!("must be at most {max}, got {n}")));
    }
    if let Some(min) = bound("exclusiveMinimum")
        && x <= min
    {
        return Err(violation(path, format!("must be greater than {min}, got {n}")));
    }
    if let Some(max) = bound("exclusiveMaximum")
        && x >= max
    {
        return Err(violation(path, format!("must be less than {max}, got {n}")));
    }
    Ok(())
}

fn check_string(s: &Map<String, Value>, text: &str, path: &str) -> Result<(), Violation> {
    let len = text.chars().count() as u64;
    if let Some(min) = s.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        return Err(violation(path, format!("needs at least {min} characters")));
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        return Err(violation(path, format!("allows at most {max} characters")));
    }
    Ok(())
}

fn check_combinators(s: &Map<String, Value>, v: &Value, path: &str) -> Result<(), Violation> {
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            validate(sub, v, path)?;
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf")
        && !any.iter().any(|sub| validate(sub, v, path).is_ok())
    {
        return Err(violation(path, "matches none of the allowed forms (anyOf)"));
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let matching = one.iter().filter(|sub| validate(sub, v, path).is_ok()).count();
        if matching != 1 {
            return Err(violation(path, format!("must match exactly one allowed form (oneOf), matches {matching}")));
        }
    }
    if let Some(not) = s.get("not")
        && validate(not, v, path).is_ok()
    {
        return Err(violation(path, "matches a forbidden form (not)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fails(schema: &Value, instance: Value) -> Violation {
        validate(schema, &instance, "config").expect_err(&format!("{instance} accepted"))
    }

    #[test]
    fn the_subset_plug_ins_declare() {
        let schema = json!({
            "type": "object",
            "properties": {
                "prefix": {"type": "string", "maxLength": 3},
                "n": {"type": "integer", "minimum": 1, "maximum": 10},
                "ratio": {"type": "number", "exclusiveMinimum": 0},
                "mode": {"enum": ["a", "b"]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "nested": {"type": "object", "required": ["x"], "additionalProperties": {"type": "boolean"}},
                "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]}
            },
            "required": ["n"],
            "additionalProperties": false
        });
        validate(&schema, &json!({"n": 3, "prefix": "ab", "tags": ["x"], "nested": {"x": true}}), "config").unwrap();
        validate(&schema, &json!({"n": 3.0}), "config").unwrap();

        let cases = [
            (json!({"n": 3, "prefx": "a"}), "config.prefx", "unknown field"),
            (json!({}), "config.n", "is required"),
            (json!({"n": "3"}), "config.n", "must be of type integer, got string"),
            (json!({"n": 2.5}), "config.n", "must be of type integer, got number"),
            (json!({"n": 11}), "config.n", "must be at most 10"),
            (json!({"n": 1, "ratio": 0}), "config.ratio", "must be greater than 0"),
            (json!({"n": 1, "prefix": "abcd"}), "config.prefix", "allows at most 3 characters"),
            (json!({"n": 1, "mode": "c"}), "config.mode", "must be one of \"a\", \"b\""),
            (json!({"n": 1, "tags": ["x", 1]}), "config.tags[1]", "must be of type string"),
            (json!({"n": 1, "tags": ["x", "y", "z"]}), "config.tags", "allows at most 2 items"),
            (json!({"n": 1, "nested": {"x": 1}}), "config.nested.x", "must be of type boolean"),
            (json!({"n": 1, "either": true}), "config.either", "must match exactly one"),
        ];
        for (instance, path, reason) in cases {
            let v = fails(&schema, instance.clone());
            assert_eq!(v.path, path, "{instance}: {v:?}");
            assert!(v.reason.starts_with(reason), "{instance}: {v:?}");
        }
    }

    #[test]
    fn boolean_and_malformed_schemas() {
        validate(&json!(true), &json!({"anything": 1}), "config").unwrap();
        assert_eq!(fails(&json!(false), json!({})).path, "config");
        validate(&json!("not a schema"), &json!({}), "config").unwrap();
        // Unsupported keywords are ignored, not guessed at.
        validate(&json!({"type": "object", "properties": {"p": {"pattern": "^a$"}}}), &json!({"p": "b"}), "config")
            .unwrap();
    }
}

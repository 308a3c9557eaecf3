//! The conformance vocabulary is documented in full: `fixtures/vocabulary.schema.json` is the JSON
//! Schema of every input and output the core speaks (generated from the types, feature `schema`),
//! and `docs/conformance.md` names every tag in it.
//!
//! After changing the vocabulary: `VOIP_UPDATE_SCHEMA=1 cargo test -p voip-sim --test vocabulary`
//! rewrites the schema file; then document the new tags.

use std::collections::BTreeSet;
use std::path::PathBuf;

use schemars::generate::SchemaSettings;
use serde_json::{json, Value};
use voip_core::{Input, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The schema of the vocabulary: `$defs` with `Input`, `Output` and every type they use.
fn generated() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    generator.subschema_for::<Input>();
    generator.subschema_for::<Output>();
    let defs: serde_json::Map<String, Value> = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://matrix-voip-rs.invalid/vocabulary.schema.json",
        "title": "matrix-voip-rs vocabulary",
        "description": "Every input (`$defs/Input`) and output (`$defs/Output`) of the core, as in the conformance fixtures. Generated from voip-core's types by `VOIP_UPDATE_SCHEMA=1 cargo test -p voip-sim --test vocabulary`; see docs/conformance.md.",
        "$defs": defs,
    })
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let path = repo().join("fixtures/vocabulary.schema.json");
    let schema = generated();
    let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    if std::env::var_os("VOIP_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "fixtures/vocabulary.schema.json is not the vocabulary of the code: regenerate it with \
         `VOIP_UPDATE_SCHEMA=1 cargo test -p voip-sim --test vocabulary` and document new tags"
    );
    // The fixture schema points at it for inputs.
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("fixtures/fixture.schema.json")).unwrap())
            .unwrap();
    let input_ref = &fixture["properties"]["steps"]["items"]["properties"]["input"]["$ref"];
    assert_eq!(input_ref, "vocabulary.schema.json#/$defs/Input");
}

/// Every tag of every tagged enum (`{"const": "place_call"}` in a `oneOf`/`anyOf` branch, or a
/// plain string `enum`).
fn tags(schema: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (name, def) in schema["$defs"].as_object().unwrap() {
        for key in ["oneOf", "anyOf"] {
            for branch in def[key].as_array().into_iter().flatten() {
                for (field, prop) in branch["properties"].as_object().into_iter().flatten() {
                    if let Some(tag) = prop["const"].as_str() {
                        out.insert((name.clone(), format!("{field}: {tag}")));
                    }
                }
                if let Some(tag) = branch["const"].as_str() {
                    out.insert((name.clone(), tag.to_owned()));
                }
                for tag in branch["enum"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    out.insert((name.clone(), tag.to_owned()));
                }
            }
        }
        for tag in def["enum"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            out.insert((name.clone(), tag.to_owned()));
        }
    }
    out
}

#[test]
fn docs_conformance_names_every_tag() {
    let doc = std::fs::read_to_string(repo().join("docs/conformance.md")).unwrap();
    let schema = generated();
    let all = tags(&schema);
    assert!(all.len() > 100, "the tag walk found too little: {}", all.len());
    let missing: Vec<String> = all
        .iter()
        .filter(|(_, tag)| {
            let word = tag.rsplit(": ").next().unwrap();
            !doc.contains(&format!("`{word}`"))
                && !doc.contains(&format!("{word}|"))
                && !doc.contains(&format!("|{word}"))
        })
        .map(|(ty, tag)| format!("{ty}: {tag}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/conformance.md does not name {} tags:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

//! `GET /swagger.json`: the OpenAPI 3.0.0 description of a served flow, in promptflow's shape.

use serde_json::{Value as Json, json};
use sluice_engine::{FlowDef, ValueType};

/// The OpenAPI type of a flow input or output type.
fn schema_type(ty: &ValueType) -> Json {
    match ty {
        ValueType::Int => json!({"type": "integer"}),
        ValueType::Double => json!({"type": "number"}),
        ValueType::Bool => json!({"type": "boolean"}),
        ValueType::List => json!({"type": "array", "items": {"type": "object"}}),
        ValueType::Object | ValueType::Image => json!({"type": "object"}),
        ValueType::String | ValueType::Other(_) => json!({"type": "string"}),
    }
}

/// Whether the flow is a chat flow: it has a chat input (promptflow's `is_chat_input`).
pub(super) fn chat_input(def: &FlowDef) -> Option<&str> {
    def.inputs
        .values()
        .find(|i| i.is_chat_input)
        .map(|i| i.name.as_str())
}

/// The chat history input: marked `is_chat_history`, or else a list input named `chat_history`.
fn chat_history(def: &FlowDef) -> Option<&str> {
    def.inputs
        .values()
        .find(|i| i.is_chat_history == Some(true))
        .or_else(|| {
            def.inputs.values().find(|i| {
                i.name == "chat_history" && i.ty == ValueType::List && i.is_chat_history.is_none()
            })
        })
        .map(|i| i.name.as_str())
}

/// The OpenAPI document of a flow. The request schema lists every input as required, as promptflow's
/// does; the example is the inputs' defaults.
pub(super) fn document(def: &FlowDef, version: &str) -> Json {
    let mut properties = serde_json::Map::new();
    let mut example = serde_json::Map::new();
    for (name, input) in &def.inputs {
        let mut schema = schema_type(&input.ty);
        if let Some(d) = &input.description {
            schema["description"] = json!(d);
        }
        properties.insert(name.clone(), schema);
        if let Some(d) = &input.default {
            example.insert(name.clone(), d.to_json_lossy());
        }
    }
    let required: Vec<&String> = def.inputs.keys().collect();
    let mut outputs = serde_json::Map::new();
    for (name, output) in &def.outputs {
        if !output.evaluation_only {
            outputs.insert(name.clone(), schema_type(&output.ty));
        }
    }
    let json_content = |schema: Json| json!({"application/json": {"schema": schema}});
    let error_schema = json!({
        "type": "object",
        "properties": {"error": {"type": "object", "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}}}}
    });
    let mut request_schema =
        json!({"type": "object", "properties": properties, "required": required});
    if !example.is_empty() {
        request_schema["example"] = Json::Object(example);
    }
    let mut doc = json!({
        "openapi": "3.0.0",
        "info": {
            "title": format!("Promptflow[{}] API", def.name),
            "version": version,
            "x-flow-name": def.name,
        },
        "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearerAuth": []}],
        "paths": {"/score": {"post": {
            "summary": format!("run the flow `{}` on one line of inputs", def.name),
            "requestBody": {"description": "the flow inputs", "required": true,
                            "content": json_content(request_schema)},
            "responses": {
                "200": {"description": "the flow outputs",
                        "content": {
                            "application/json": {"schema": {"type": "object", "properties": outputs}},
                            "text/event-stream": {"schema": {"type": "object"}},
                        }},
                "400": {"description": "a user error", "content": json_content(error_schema.clone())},
                "401": {"description": "no or a wrong API key", "content": json_content(error_schema.clone())},
                "406": {"description": "the Accept header cannot be served", "content": json_content(error_schema.clone())},
                "429": {"description": "too many lines in flight", "content": json_content(error_schema.clone())},
                "500": {"description": "a system error", "content": json_content(error_schema.clone())},
                "504": {"description": "the line timed out", "content": json_content(error_schema)},
            },
        }}},
    });
    if let Some(chat_in) = chat_input(def) {
        let info = &mut doc["info"];
        info["x-flow-type"] = json!("chat");
        info["x-chat-input"] = json!(chat_in);
        if let Some(h) = chat_history(def) {
            info["x-chat-history"] = json!(h);
        }
        if let Some(out) = def.outputs.values().find(|o| o.is_chat_output) {
            info["x-chat-output"] = json!(out.name);
        }
    }
    doc
}

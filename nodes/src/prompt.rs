//! `prompt` nodes: render a Jinja template with the node's inputs; the output is the rendered text.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_engine::spawn::run_blocking;
use sluice_engine::{
    BuildContext, BuildError, Built, Node, NodeContext, NodeDef, NodeError, NodeInputs, NodeKind,
    Param, Signature, Value, ValueType,
};

use crate::template::Template;

/// Templates larger than this are rendered on the blocking pool.
const INLINE_RENDER_LIMIT: usize = 64 * 1024;

/// The `prompt` node kind.
#[derive(Debug, Default)]
pub struct PromptKind;

impl NodeKind for PromptKind {
    fn type_name(&self) -> &'static str {
        "prompt"
    }

    fn build(&self, node: &NodeDef, cx: &BuildContext) -> Result<Built, BuildError> {
        let path = cx.source_file(node)?;
        let template = Template::from_file(&path)?;
        Ok(Built {
            signature: template_signature(&template)?,
            node: Arc::new(PromptNode {
                template: Arc::new(template),
            }),
        })
    }
}

/// Template variables are string inputs (§7.1) that need not be bound; other inputs pass through.
pub fn template_signature(template: &Template) -> Result<Signature, BuildError> {
    let mut signature = Signature {
        accepts_kwargs: true,
        ..Signature::default()
    };
    for var in template.variables() {
        if var == "template" {
            return Err(BuildError::new(
                "the template uses a variable named `template`, which is reserved",
            )
            .at(template.path(), None)
            .help("rename the variable"));
        }
        signature.params.insert(
            var.clone(),
            Param {
                ty: Some(ValueType::String),
                has_default: false,
                required: false,
            },
        );
    }
    Ok(signature)
}

#[derive(Debug)]
struct PromptNode {
    template: Arc<Template>,
}

#[async_trait]
impl Node for PromptNode {
    async fn run(&self, inputs: NodeInputs, _cx: &NodeContext) -> Result<Value, NodeError> {
        if self.template.size() <= INLINE_RENDER_LIMIT {
            return self
                .template
                .render(inputs.iter().map(|(k, v)| (k.as_str(), v)))
                .map(Value::String);
        }
        let template = self.template.clone();
        run_blocking(move || {
            template
                .render(inputs.iter().map(|(k, v)| (k.as_str(), v)))
                .map(Value::String)
        })
        .await
    }
}

//! Jinja2-compatible templates on minijinja, set up as promptflow renders them.
//!
//! `trim_blocks` on, `keep_trailing_newline` on, `lstrip_blocks` off; undefined variables render empty;
//! no auto-escaping; Python string/dict methods (`.upper()`, `.items()`) and Jinja2's extra filters.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Object, ObjectRepr, Value as JValue};
use minijinja::{AutoEscape, Environment, Error as JError, ErrorKind, UndefinedBehavior};
use sluice_engine::yaml::Span;
use sluice_engine::{BuildError, NodeError, Opaque, Value};

const NAME: &str = "template";

/// A template compiled once, when the flow is loaded.
#[derive(Debug)]
pub struct Template {
    env: Environment<'static>,
    path: PathBuf,
    /// Variables the template reads, in order of first appearance.
    variables: Vec<String>,
    size: usize,
}

impl Template {
    /// Reads and compiles a template file; a syntax error is a [`BuildError`] at its line.
    pub fn from_file(path: &Path) -> Result<Template, BuildError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            BuildError::new(format!("cannot read template {}: {e}", path.display()))
        })?;
        Template::from_source(source, path)
    }

    pub fn from_source(source: String, path: &Path) -> Result<Template, BuildError> {
        let mut env = environment();
        let size = source.len();
        let ordered = variables_in_order(&source);
        if let Err(e) = env.add_template_owned(NAME, source) {
            return Err(template_error(&e, path));
        }
        let tmpl = env
            .get_template(NAME)
            .map_err(|e| template_error(&e, path))?;
        let declared = tmpl.undeclared_variables(false);
        let mut variables: Vec<String> = ordered
            .into_iter()
            .filter(|v| declared.contains(v))
            .collect();
        let mut rest: Vec<String> = declared
            .into_iter()
            .filter(|v| !variables.contains(v))
            .collect();
        rest.sort();
        variables.extend(rest);
        variables.retain(|v| !GLOBALS.contains(&v.as_str()));
        Ok(Template {
            env,
            path: path.to_path_buf(),
            variables,
            size,
        })
    }

    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Source size in bytes; large templates are rendered off the async threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Renders with the given variables.
    pub fn render<'a>(
        &self,
        vars: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Result<String, NodeError> {
        let ctx = JValue::from_pairs(vars.into_iter().map(|(k, v)| (k, to_jinja(v))));
        let tmpl = self.env.get_template(NAME).map_err(|e| render_error(&e))?;
        tmpl.render(ctx).map_err(|e| render_error(&e))
    }
}

/// Names minijinja reports as undeclared but that are globals, not inputs.
const GLOBALS: [&str; 6] = ["range", "dict", "namespace", "loop", "cycler", "joiner"];

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(false)
        .keep_trailing_newline(true)
        .build()
        .expect("default delimiters are valid");
    env.set_syntax(syntax);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_debug(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("truncate", truncate);
    env
}

/// Jinja2's `truncate(s, length=255, killwords=False, end='...', leeway=5)`, positional or by keyword.
fn truncate(
    s: String,
    length: Option<usize>,
    killwords: Option<bool>,
    end: Option<String>,
    leeway: Option<usize>,
) -> String {
    let length = length.unwrap_or(255);
    let end = end.unwrap_or_else(|| "...".into());
    let leeway = leeway.unwrap_or(5);
    let count = s.chars().count();
    if count <= length + leeway {
        return s;
    }
    let keep = length.saturating_sub(end.chars().count());
    let head: String = s.chars().take(keep).collect();
    if killwords.unwrap_or(false) {
        return head + &end;
    }
    let cut = match head.rfind(' ') {
        Some(i) => &head[..i],
        None => &head[..],
    };
    format!("{cut}{end}")
}

/// Variable names in order of first appearance, for stable input ordering (minijinja returns a set).
fn variables_in_order(source: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let mut rest = source;
    while let Some(start) = rest.find('{') {
        rest = &rest[start + 1..];
        let closer = match rest.chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            _ => continue,
        };
        let body_end = rest.find(closer).unwrap_or(rest.len());
        let body = &rest[1..body_end];
        let mut ident = String::new();
        let mut prev = ' ';
        for c in body.chars().chain(std::iter::once(' ')) {
            if c.is_alphanumeric() || c == '_' {
                ident.push(c);
                continue;
            }
            if !ident.is_empty()
                && prev != '.'
                && !ident.chars().next().is_some_and(|f| f.is_ascii_digit())
                && !out.contains(&ident)
            {
                out.push(std::mem::take(&mut ident));
            }
            ident.clear();
            if !c.is_whitespace() {
                prev = c;
            } else if prev != '.' {
                prev = ' ';
            }
        }
        rest = &rest[body_end..];
    }
    out
}

fn template_error(e: &JError, path: &Path) -> BuildError {
    let line = e.line();
    let col = match (e.range(), e.template_source()) {
        (Some(r), Some(src)) => src[..r.start]
            .rsplit('\n')
            .next()
            .map_or(1, |l| l.chars().count() + 1),
        _ => 1,
    };
    let detail = e.detail().unwrap_or("invalid template").to_owned();
    BuildError::new(format!("template syntax error: {detail}"))
        .at(path, line.map(|line| Span { line, col }))
        .help("fix the Jinja syntax at the marked position")
}

fn render_error(e: &JError) -> NodeError {
    let detail = match e.kind() {
        ErrorKind::UndefinedError => e
            .detail()
            .map(str::to_owned)
            .unwrap_or_else(|| e.to_string()),
        _ => e.to_string(),
    };
    let at = e
        .line()
        .map(|l| format!(" (template line {l})"))
        .unwrap_or_default();
    NodeError::user(
        "JinjaTemplateError",
        format!("Failed to render jinja template: {detail}{at}"),
    )
}

/// Converts an engine value to a template value.
pub fn to_jinja(v: &Value) -> JValue {
    match v {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Int(i) => JValue::from(*i),
        Value::Float(f) => JValue::from(*f),
        Value::String(s) => JValue::from(s.as_str()),
        Value::List(items) => JValue::from(items.iter().map(to_jinja).collect::<Vec<_>>()),
        Value::Map(map) => JValue::from_pairs(map.iter().map(|(k, v)| (k.as_str(), to_jinja(v)))),
        Value::Opaque(o) => match o.to_plain() {
            Some(plain) => to_jinja(&plain),
            None => JValue::from_object(OpaqueObject(o.clone())),
        },
    }
}

/// An opaque value in a template: renders as its `str()`.
#[derive(Debug)]
struct OpaqueObject(Arc<dyn Opaque>);

impl Object for OpaqueObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, vars: &[(&str, Value)]) -> String {
        let t = Template::from_source(src.to_owned(), Path::new("t.jinja2")).unwrap();
        t.render(vars.iter().map(|(k, v)| (*k, v))).unwrap()
    }

    #[test]
    fn trims_blocks_and_keeps_trailing_newline() {
        let out = render(
            "{% for x in xs %}\n- {{ x }}\n{% endfor %}\nend\n",
            &[("xs", Value::List(vec![1.into(), 2.into()]))],
        );
        assert_eq!(out, "- 1\n- 2\nend\n");
    }

    #[test]
    fn undefined_renders_empty_and_python_methods_work() {
        assert_eq!(
            render("[{{ missing }}] {{ s.upper() }}", &[("s", "ab".into())]),
            "[] AB"
        );
    }

    #[test]
    fn values_render_like_python() {
        let v: Value = serde_json::json!({"a": [1, 2.0, true, null]}).into();
        assert_eq!(
            render("{{ v }}", &[("v", v)]),
            "{'a': [1, 2.0, True, None]}"
        );
    }

    #[test]
    fn truncate_takes_positional_arguments() {
        assert_eq!(
            render(
                "{{ s|truncate(9) }}",
                &[("s", "hello world foo bar".into())]
            ),
            "hello..."
        );
        assert_eq!(
            render(
                "{{ s|truncate(9, True) }}",
                &[("s", "hello world foo bar".into())]
            ),
            "hello ..."
        );
    }

    #[test]
    fn variables_keep_first_appearance_order() {
        let t = Template::from_source(
            "{{ b }} {% if a %}{{ c.x }}{% endif %}{% for i in range(3) %}{{ i }}{% endfor %}"
                .into(),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(t.variables(), ["b", "a", "c"]);
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err =
            Template::from_source("ok\n{{ foo( }}\n".into(), Path::new("t.jinja2")).unwrap_err();
        assert_eq!(err.span.map(|s| s.line), Some(2));
    }
}

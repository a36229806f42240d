//! Jinja2-compatible templates on minijinja, set up as promptflow renders them.
//!
//! `trim_blocks` on, `keep_trailing_newline` on, `lstrip_blocks` off; undefined variables render empty;
//! no auto-escaping; Python string/dict methods (`.upper()`, `.items()`) and Jinja2's extra filters.
//!
//! A render has a budget ([`RENDER_FUEL`], minijinja's fuel: about one unit per instruction and per 64
//! bytes created), so an endless or enormous loop ends with an error instead of holding a core past the
//! line timeout; and no helper builds a string over [`MAX_STRING_BYTES`] (`"x".zfill(10**12)` is an
//! error, not an allocation failure that aborts the process).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value as JValue};
use minijinja::{AutoEscape, Environment, Error as JError, ErrorKind, UndefinedBehavior};
use sluice_engine::yaml::Span;
use sluice_engine::{BuildError, NodeError, Opaque, Value};

const NAME: &str = "template";

/// The work one render may do: minijinja fuel, about one unit per instruction executed and per 64 bytes
/// of data created. 5 million is well over a second of work and 300 MB of strings; real prompts use a
/// few thousand.
pub const RENDER_FUEL: u64 = 5_000_000;

/// The longest string a template helper may build (padding, `str.format` widths, `wordwrap`, `tojson`).
pub const MAX_STRING_BYTES: usize = 64 << 20;

/// Refuses to build a string of `n` bytes over [`MAX_STRING_BYTES`]; charges the render's fuel for it
/// before it is built (minijinja charges a helper's result only once it exists).
fn ensure_size(state: &minijinja::State<'_, '_>, n: usize) -> Result<(), JError> {
    if n > MAX_STRING_BYTES {
        return Err(JError::new(
            ErrorKind::InvalidOperation,
            format!(
                "this would build a string of {n} bytes; a template may build at most {MAX_STRING_BYTES}"
            ),
        ));
    }
    state.consume_fuel((n / 64) as u64)
}

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
        if let Some(line) = overlong_chain(&source) {
            return Err(BuildError::new(format!(
                "template syntax error: an expression with more than {MAX_CHAIN} attribute or index steps"
            ))
            .at(path, Some(Span { line, col: 1 }))
            .help("split the expression; minijinja walks such chains recursively"));
        }
        if let Some((line, col)) = namespace_into_namespace(&source) {
            return Err(BuildError::new(
                "template error: a namespace (or a list or map holding one) is stored in a namespace's attribute",
            )
            .at(path, Some(Span { line, col }))
            .help("store the values you need (ns.a = other.value), not the namespace itself: a namespace that holds itself can never be printed"));
        }
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

    /// [`Template::render`] with every list (inside dicts too) printing as its items, one a line, as
    /// promptflow's chat tools wrap their inputs (`ChatInputList`), so a list of text and images
    /// prints as lines a chat prompt turns into parts.
    pub fn render_chat_lists<'a>(
        &self,
        vars: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Result<String, NodeError> {
        let ctx = JValue::from_pairs(vars.into_iter().map(|(k, v)| (k, to_jinja_chat(v))));
        let tmpl = self.env.get_template(NAME).map_err(|e| render_error(&e))?;
        tmpl.render(ctx).map_err(|e| render_error(&e))
    }
}

/// Where a template stores a namespace into a namespace's attribute (`{% set ns.a = ns %}`, also
/// through a list, a map, a loop variable or another name), as a 1-based line and column.
///
/// Namespaces are the only values a template can change after making them, so refusing this one
/// statement means no value can come to hold itself; printing one that did (`~`, `|string`) would
/// recurse without end inside minijinja and overflow the stack. The check is conservative: a name
/// that may hold a namespace anywhere in the template counts as holding one everywhere.
fn namespace_into_namespace(source: &str) -> Option<(usize, usize)> {
    use minijinja::machinery::ast::{CallArg, Expr, Stmt};
    use std::collections::HashSet;

    /// Whether `e`'s value may be, or contain, a namespace.
    fn holds(e: &Expr<'_>, names: &HashSet<String>) -> bool {
        let any = |items: &[Expr<'_>]| items.iter().any(|i| holds(i, names));
        let args = |args: &[CallArg<'_>]| {
            args.iter().any(|a| match a {
                CallArg::Pos(e)
                | CallArg::Kwarg(_, e)
                | CallArg::PosSplat(e)
                | CallArg::KwargSplat(e) => holds(e, names),
            })
        };
        match e {
            Expr::Var(v) => names.contains(v.id),
            Expr::Call(c) => {
                matches!(&c.expr, Expr::Var(v) if v.id == "namespace") || args(&c.args)
            }
            Expr::List(l) => any(&l.items),
            Expr::Tuple(t) => any(&t.items),
            Expr::Map(m) => any(&m.values),
            Expr::IfExpr(i) => {
                holds(&i.true_expr, names) || i.false_expr.as_ref().is_some_and(|f| holds(f, names))
            }
            Expr::Filter(f) => f.expr.as_ref().is_some_and(|x| holds(x, names)) || args(&f.args),
            Expr::GetItem(g) => holds(&g.expr, names),
            Expr::Slice(s) => holds(&s.expr, names),
            // Reading an attribute, arithmetic, comparisons and tests make new plain values.
            _ => false,
        }
    }

    /// The variable names an assignment target binds (`x`, `(a, b)`).
    fn bound(target: &Expr<'_>, out: &mut Vec<String>) {
        match target {
            Expr::Var(v) => out.push(v.id.to_owned()),
            Expr::Tuple(t) => t.items.iter().for_each(|i| bound(i, out)),
            Expr::List(l) => l.items.iter().for_each(|i| bound(i, out)),
            _ => {}
        }
    }

    /// One pass over the statements: adds the names that may hold a namespace; returns the position
    /// of the first attribute assignment whose value may hold one.
    fn walk(stmts: &[Stmt<'_>], names: &mut HashSet<String>, found: &mut Option<(usize, usize)>) {
        for stmt in stmts {
            let bind = |target: &Expr<'_>, value_holds: bool, names: &mut HashSet<String>| {
                if value_holds {
                    let mut out = Vec::new();
                    bound(target, &mut out);
                    names.extend(out);
                }
            };
            match stmt {
                Stmt::Template(t) => walk(&t.children, names, found),
                Stmt::Set(set) => {
                    if let Expr::GetAttr(attr) = &set.target {
                        // Only a namespace takes `x.attr = ...`: its base holds one.
                        let mut out = Vec::new();
                        bound(&attr.expr, &mut out);
                        names.extend(out);
                        if found.is_none() && holds(&set.expr, names) {
                            let span = set.span();
                            *found = Some((span.start_line as usize, span.start_col as usize + 1));
                        }
                    } else {
                        let h = holds(&set.expr, names);
                        bind(&set.target, h, names);
                    }
                }
                Stmt::ForLoop(f) => {
                    let h = holds(&f.iter, names);
                    bind(&f.target, h, names);
                    walk(&f.body, names, found);
                    walk(&f.else_body, names, found);
                }
                Stmt::WithBlock(w) => {
                    for (target, value) in &w.assignments {
                        let h = holds(value, names);
                        bind(target, h, names);
                    }
                    walk(&w.body, names, found);
                }
                Stmt::IfCond(i) => {
                    walk(&i.true_body, names, found);
                    walk(&i.false_body, names, found);
                }
                Stmt::SetBlock(s) => walk(&s.body, names, found),
                Stmt::AutoEscape(a) => walk(&a.body, names, found),
                Stmt::FilterBlock(f) => walk(&f.body, names, found),
                Stmt::Block(b) => walk(&b.body, names, found),
                Stmt::Macro(m) => walk(&m.body, names, found),
                Stmt::CallBlock(c) => walk(&c.macro_decl.body, names, found),
                _ => {}
            }
        }
    }

    let ast = minijinja::machinery::parse(source, NAME, Default::default()).ok()?;
    let mut names = HashSet::new();
    // Names learn that they hold a namespace from statements further down (a loop body, a macro):
    // repeat until nothing changes.
    loop {
        let before = names.len();
        let mut found = None;
        walk(std::slice::from_ref(&ast), &mut names, &mut found);
        if found.is_some() {
            return found;
        }
        if names.len() == before {
            return None;
        }
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
    env.set_fuel(Some(RENDER_FUEL));
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(python_methods);
    env.set_formatter(python_formatter);
    env.add_filter("truncate", truncate);
    env.add_filter("tojson", tojson);
    env.add_filter(
        "center",
        |state: &minijinja::State<'_, '_>, s: String, width: Option<usize>| {
            pad(state, &s, width.unwrap_or(80), ' ', Align::Center)
        },
    );
    env.add_filter("wordwrap", wordwrap);
    env.add_filter(
        "pprint",
        |state: &minijinja::State<'_, '_>, v: JValue| -> Result<String, JError> {
            Ok(match v.as_str() {
                Some(s) => sluice_engine::value::py_str_repr(s),
                None => {
                    check_printable(state, &v)?;
                    v.to_string()
                }
            })
        },
    );
    env
}

/// Floats print as Python prints them (`1e+20`, `1e-05`); everything else as minijinja does.
fn python_formatter(
    out: &mut minijinja::Output<'_>,
    state: &mut minijinja::State<'_, '_>,
    value: &JValue,
) -> Result<(), JError> {
    if value.is_number()
        && !value.is_integer()
        && let Ok(f) = f64::try_from(value.clone())
    {
        return out
            .write_str(&sluice_engine::value::py_float_repr(f))
            .map_err(|_| JError::new(ErrorKind::WriteFailure, "write failed"));
    }
    check_printable(state, value)?;
    minijinja::escape_formatter(out, state, value)
}

/// The deepest list or map a template may print.
const MAX_PRINT_DEPTH: usize = 256;

/// Refuses to print a list or map nested deeper than [`MAX_PRINT_DEPTH`] or holding itself (a
/// namespace assigned into itself, `{% set ns.a = ns %}`): minijinja prints containers recursively, so
/// either would overflow the stack and abort the process. Walking the value costs fuel, so a value
/// that shares parts exponentially runs out of budget instead of taking forever.
fn check_printable(state: &minijinja::State<'_, '_>, v: &JValue) -> Result<(), JError> {
    use minijinja::value::ValueKind;
    fn walk(
        state: &minijinja::State<'_, '_>,
        v: &JValue,
        depth: usize,
        seen: &mut u64,
    ) -> Result<(), JError> {
        // One-shot iterables are not walked: that would use them up.
        let is_map = match v.kind() {
            ValueKind::Map => true,
            ValueKind::Seq => false,
            _ => return Ok(()),
        };
        if depth >= MAX_PRINT_DEPTH {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!(
                    "cannot print a value nested more than {MAX_PRINT_DEPTH} deep (does a namespace hold itself?)"
                ),
            ));
        }
        *seen += 1;
        if (*seen).is_multiple_of(16) {
            state.consume_fuel(1)?;
        }
        for item in v.try_iter()? {
            if is_map {
                walk(state, &v.get_item(&item)?, depth + 1, seen)?;
            } else {
                walk(state, &item, depth + 1, seen)?;
            }
        }
        Ok(())
    }
    walk(state, v, 0, &mut 0)
}

enum Align {
    Left,
    Right,
    Center,
}

/// Python's `str.ljust` / `rjust` / `center`.
fn pad(
    state: &minijinja::State<'_, '_>,
    s: &str,
    width: usize,
    fill: char,
    align: Align,
) -> Result<String, JError> {
    let len = s.chars().count();
    if len >= width {
        return Ok(s.to_owned());
    }
    ensure_size(
        state,
        (width - len).saturating_mul(fill.len_utf8()) + s.len(),
    )?;
    let total = width - len;
    let (left, right) = match align {
        Align::Left => (0, total),
        Align::Right => (total, 0),
        // CPython puts the extra character on the left when the string's length is odd... and the pad odd.
        Align::Center => {
            let left = total / 2 + (total & width & 1);
            (left, total - left)
        }
    };
    let f = fill.to_string();
    Ok(format!("{}{s}{}", f.repeat(left), f.repeat(right)))
}

/// Python string and list methods minijinja lacks, then minijinja-contrib's `pycompat` for the rest.
fn python_methods(
    state: &mut minijinja::State<'_, '_>,
    value: &JValue,
    method: &str,
    args: &[JValue],
) -> Result<JValue, JError> {
    use minijinja::value::from_args;
    if let Some(s) = value.as_str() {
        let fill_of = |f: Option<String>| f.and_then(|f| f.chars().next()).unwrap_or(' ');
        match method {
            "zfill" => {
                let (width,): (usize,) = from_args(args)?;
                let (sign, digits) = match s.strip_prefix(['-', '+']) {
                    Some(rest) => (&s[..1], rest),
                    None => ("", s),
                };
                let zeros = width.saturating_sub(s.chars().count());
                ensure_size(state, zeros + s.len())?;
                return Ok(JValue::from(format!("{sign}{}{digits}", "0".repeat(zeros))));
            }
            "ljust" | "rjust" | "center" => {
                let (width, fill): (usize, Option<String>) = from_args(args)?;
                let align = match method {
                    "ljust" => Align::Left,
                    "rjust" => Align::Right,
                    _ => Align::Center,
                };
                return Ok(JValue::from(pad(state, s, width, fill_of(fill), align)?));
            }
            "format" => check_format_widths(s)?,
            "rsplit" => {
                let (sep, max): (Option<String>, Option<i64>) = from_args(args)?;
                let max = max.filter(|m| *m >= 0).map(|m| m as usize);
                let mut parts: Vec<String> = match (&sep, max) {
                    (Some(sep), Some(m)) => {
                        s.rsplitn(m + 1, sep.as_str()).map(str::to_owned).collect()
                    }
                    (Some(sep), None) => s.rsplit(sep.as_str()).map(str::to_owned).collect(),
                    (None, _) => s.split_whitespace().rev().map(str::to_owned).collect(),
                };
                parts.reverse();
                return Ok(JValue::from(parts));
            }
            _ => {}
        }
    }
    if method == "index" && !value.is_undefined() && value.as_str().is_none() {
        let (needle,): (JValue,) = from_args(args)?;
        if let Ok(iter) = value.try_iter() {
            for (i, item) in iter.enumerate() {
                if item == needle {
                    return Ok(JValue::from(i));
                }
            }
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("{needle} is not in list"),
            ));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Refuses a `str.format` field whose width or precision asks for more than [`MAX_STRING_BYTES`]
/// (`"{:>99999999999}".format(x)`), before minijinja-contrib allocates it.
fn check_format_widths(fmt: &str) -> Result<(), JError> {
    let mut total: usize = fmt.len();
    let mut rest = fmt;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let close = rest.find('}').unwrap_or(rest.len());
        let field = &rest[..close];
        if let Some((_, spec)) = field.split_once(':') {
            for digits in spec.split(|c: char| !c.is_ascii_digit()) {
                if digits.is_empty() {
                    continue;
                }
                let n = digits.parse::<usize>().unwrap_or(usize::MAX);
                total = total.saturating_add(n);
            }
        }
        rest = &rest[close..];
    }
    if total > MAX_STRING_BYTES {
        return Err(JError::new(
            ErrorKind::InvalidOperation,
            format!(
                "format widths ask for {total} bytes; a template may build at most {MAX_STRING_BYTES}"
            ),
        ));
    }
    Ok(())
}

/// Jinja2's `wordwrap(s, width=79, break_long_words=True, wrapstring=None)`, greedy, positional or by keyword.
fn wordwrap(
    state: &minijinja::State<'_, '_>,
    s: String,
    width: Option<usize>,
    break_long_words: Option<bool>,
    wrapstring: Option<String>,
) -> Result<String, JError> {
    let width = width.unwrap_or(79).max(1);
    let wrap = wrapstring.unwrap_or_else(|| "\n".into());
    let mut lines: Vec<String> = vec![];
    let mut current = String::new();
    for word in s.split_whitespace() {
        let mut word = word.to_owned();
        while break_long_words.unwrap_or(true) && word.chars().count() > width {
            if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
        if current.is_empty() {
            current = word;
        } else if current.chars().count() + 1 + word.chars().count() <= width {
            current.push(' ');
            current.push_str(&word);
        } else {
            lines.push(std::mem::replace(&mut current, word));
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    ensure_size(
        state,
        s.len()
            .saturating_add(lines.len().saturating_mul(wrap.len())),
    )?;
    Ok(lines.join(&wrap))
}

/// Jinja2's `tojson`: `json.dumps(value, sort_keys=True)` made HTML-safe, ASCII only, Python separators.
fn tojson(value: JValue, indent: Option<usize>) -> Result<JValue, JError> {
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}

fn write_json(
    v: &JValue,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) -> Result<(), JError> {
    use minijinja::value::ValueKind;
    if level > 256 {
        return Err(JError::new(
            ErrorKind::InvalidOperation,
            "tojson: the value nests more than 256 deep",
        ));
    }
    let newline = |out: &mut String, level: usize| -> Result<(), JError> {
        if let Some(n) = indent {
            let width = n.saturating_mul(level);
            if out.len().saturating_add(width) > MAX_STRING_BYTES {
                return Err(JError::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: the output would pass {MAX_STRING_BYTES} bytes"),
                ));
            }
            out.push('\n');
            out.push_str(&" ".repeat(width));
        }
        Ok(())
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match (v.is_integer(), v.as_i64()) {
            (true, Some(i)) => out.push_str(&i.to_string()),
            _ => {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&match f {
                    f if f.is_nan() => "NaN".to_owned(),
                    f if f.is_infinite() => {
                        if f > 0.0 {
                            "Infinity".to_owned()
                        } else {
                            "-Infinity".to_owned()
                        }
                    }
                    f => sluice_engine::value::py_float_repr(f),
                });
            }
        },
        ValueKind::Map => {
            let mut keys: Vec<JValue> = v.try_iter()?.collect();
            keys.sort_by_key(|k| k.to_string());
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1)?;
                json_string(&k.to_string(), out);
                out.push_str(": ");
                write_json(&v.get_item(k)?, indent, level + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, level)?;
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1)?;
                write_json(item, indent, level + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, level)?;
            }
            out.push(']');
        }
        _ => json_string(&v.to_string(), out),
    }
    Ok(())
}

/// A JSON string as Python's `json.dumps` writes it (ASCII only), with `<>&'` escaped as Jinja2 does.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\'' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
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

/// The most `.attr` and `[index]` steps one tag may hold.
const MAX_CHAIN: usize = 500;

/// The line of the first tag (`{{ }}` or `{% %}`) with more than [`MAX_CHAIN`] `.` and `[` outside string
/// literals. minijinja parses `x.a.a.a...` into a nested tree and walks it recursively when it lists a
/// template's variables, so a few thousand steps overflowed a 2 MiB thread stack (found by the fuzzer).
fn overlong_chain(source: &str) -> Option<usize> {
    let mut rest = source;
    let mut offset = 0;
    while let Some(start) = rest.find('{') {
        let closer = match rest[start + 1..].chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            _ => {
                offset += start + 1;
                rest = &rest[start + 1..];
                continue;
            }
        };
        let body_start = start + 2;
        let body_len = rest[body_start..]
            .find(closer)
            .unwrap_or(rest.len() - body_start);
        let body = &rest[body_start..body_start + body_len];
        let mut steps = 0;
        let mut quote: Option<char> = None;
        for c in body.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '.' | '[') => steps += 1,
                _ => {}
            }
        }
        if steps > MAX_CHAIN {
            return Some(source[..offset + start].matches('\n').count() + 1);
        }
        let next = body_start + body_len;
        offset += next;
        rest = &rest[next..];
    }
    None
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
        // `{%}` closes at once: no body (found by the fuzzer: slicing 1..0 panicked).
        let body = rest.get(1..body_end).unwrap_or("");
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
        ErrorKind::OutOfFuel => format!(
            "the template used up its budget of {RENDER_FUEL} steps \
             (a loop that never ends, or builds too much)"
        ),
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
        // An image renders as its placeholder, `Image(<hash>)`.
        Value::Opaque(o) if o.is_media() => JValue::from_object(OpaqueObject(o.clone())),
        Value::Opaque(o) => match o.to_plain() {
            Some(plain) => to_jinja(&plain),
            None => JValue::from_object(OpaqueObject(o.clone())),
        },
    }
}

/// [`to_jinja`], with lists as [`ChatList`]s.
fn to_jinja_chat(v: &Value) -> JValue {
    match v {
        Value::List(items) => {
            JValue::from_object(ChatList(items.iter().map(to_jinja_chat).collect()))
        }
        Value::Map(map) => {
            JValue::from_pairs(map.iter().map(|(k, v)| (k.as_str(), to_jinja_chat(v))))
        }
        other => to_jinja(other),
    }
}

/// promptflow's `ChatInputList`: a list that prints as its items, one a line.
#[derive(Debug)]
struct ChatList(Vec<JValue>);

impl Object for ChatList {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }
    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        self.0.get(key.as_usize()?).cloned()
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.0.len())
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
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
    fn chat_lists_print_one_item_a_line_and_still_iterate() {
        let t = Template::from_source(
            "{{ q }}|{% for x in q %}[{{ x }}]{% endfor %}|{{ h.a }}|{{ q | length }}".to_owned(),
            Path::new("t.jinja2"),
        )
        .unwrap();
        let q: Value = serde_json::json!(["a", 2, "b"]).into();
        let h: Value = serde_json::json!({"a": ["x", "y"]}).into();
        let out = t.render_chat_lists([("q", &q), ("h", &h)]).unwrap();
        assert_eq!(out, "a\n2\nb|[a][2][b]|x\ny|3");
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
    fn tojson_matches_jinja2() {
        let v: Value = serde_json::json!({"b": 2, "a": "x<y é", "l": [1, 2.0, null]}).into();
        assert_eq!(
            render("{{ v|tojson }}", &[("v", v)]),
            r#"{"a": "x\u003cy \u00e9", "b": 2, "l": [1, 2.0, null]}"#
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
    fn storing_a_namespace_in_a_namespace_is_refused_when_the_template_loads() {
        for bad in [
            "{% set ns = namespace(a=1) %}{% set ns.a = ns %}{{ ns ~ '' }}",
            "{% set ns = namespace() %}{% set ns.a = [ns] %}{{ ns|string }}",
            "{% set ns = namespace() %}{% set ns.a = {'k': ns} %}",
            "{% set a = namespace() %}{% set b = namespace() %}{% set a.x = b %}{% set b.x = a %}",
            "{% set ns = namespace() %}{% set y = [ns] %}{% set ns.a = y %}",
            "{% set ns = namespace() %}{% for x in [ns] %}{% set ns.a = x %}{% endfor %}",
            "{% set ns = namespace() %}{% set ns.a = 1 if q else ns %}",
            "{% macro f(n) %}{% set n.a = n %}{% endmacro %}",
            "{% set ns = namespace() %}{% set ns.a = [ns]|first %}",
        ] {
            let e = Template::from_source(bad.into(), Path::new("t.jinja2")).unwrap_err();
            assert!(e.to_string().contains("namespace"), "{bad}: {e}");
        }
        for good in [
            "{% set ns = namespace(total=0) %}{% for i in [1, 2] %}{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }}",
            "{% set ns = namespace(items=[]) %}{% set ns.items = ns.items + [q] %}{{ ns.items }}",
            "{% set a = namespace(v=1) %}{% set b = namespace(v=2) %}{% set a.v = b.v %}{{ a.v }}",
            "{% set ns = namespace(s='') %}{% set ns.s = ns.s ~ q %}{{ ns.s }}",
        ] {
            let t = Template::from_source(good.into(), Path::new("t.jinja2"));
            assert!(t.is_ok(), "{good}: {:?}", t.err());
        }
    }

    #[test]
    fn printing_a_value_that_shares_parts_exponentially_runs_out_of_budget() {
        let err = render_err(
            "{% set ns = namespace(v=[1]) %}{% for i in range(60) %}{% set ns.v = [ns.v, ns.v] %}{% endfor %}{{ ns.v }}",
        );
        assert!(err.contains("budget"), "{err}");
        assert_eq!(
            render("{{ [1, [2, {'a': 3}]] }}", &[]),
            "[1, [2, {'a': 3}]]"
        );
    }

    #[test]
    fn a_very_long_attribute_chain_is_a_syntax_error_not_a_stack_overflow() {
        let src = format!("ok\n{{{{ x{} }}}}", ".a".repeat(5000));
        let err = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || Template::from_source(src, Path::new("t")).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(err.span.map(|s| s.line), Some(2));
        let dots = format!("{{{{ '{}' ~ x.a.b }}}}", ".".repeat(2000));
        assert!(Template::from_source(dots, Path::new("t")).is_ok());
    }

    #[test]
    fn a_block_that_closes_at_once_is_a_syntax_error_not_a_panic() {
        assert!(Template::from_source("{%}".into(), Path::new("t")).is_err());
        assert!(Template::from_source("a {{}".into(), Path::new("t")).is_err());
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err =
            Template::from_source("ok\n{{ foo( }}\n".into(), Path::new("t.jinja2")).unwrap_err();
        assert_eq!(err.span.map(|s| s.line), Some(2));
    }

    fn render_err(src: &str) -> String {
        let t = Template::from_source(src.to_owned(), Path::new("t.jinja2")).unwrap();
        let start = std::time::Instant::now();
        let err = t.render(std::iter::empty()).unwrap_err();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        err.to_string()
    }

    /// Checks that each of `sources` fails to render with an error that says one of `reasons`.
    fn assert_refused(sources: &[&str], reasons: &[&str]) {
        for src in sources {
            let err = render_err(src);
            assert!(reasons.iter().any(|r| err.contains(r)), "{src}: {err}");
        }
    }

    #[test]
    fn string_building_helpers_refuse_huge_sizes() {
        assert_refused(
            &[
                "{{ 'x'.zfill(10**12) }}",
                "{{ 'x'.ljust(10**12) }}",
                "{{ 'x'.rjust(10**12, '*') }}",
                "{{ 'x'.center(10**12) }}",
                "{{ 'x'|center(10**12) }}",
                "{{ '{:>999999999999}'.format(1) }}",
                "{{ 'a b c d e f'|wordwrap(1, True, 'x' * 50000000) }}",
                "{{ [[1, 2], 3]|tojson(10**15) }}",
            ],
            &["at most", "pass"],
        );
        assert_eq!(
            render("{{ '7'.zfill(3) }}|{{ 'a'.center(5, '*') }}", &[]),
            "007|**a**"
        );
    }

    #[test]
    fn repeated_doubling_and_repetition_run_out_of_budget() {
        assert_refused(
            &[
                "{% set s = namespace(v='x') %}{% for i in range(60) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v|length }}",
                "{{ 'x' * 10**11 }}",
            ],
            &["budget", "too large"],
        );
    }

    #[test]
    fn a_cpu_loop_ends_with_an_error() {
        let err = render_err(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        );
        assert!(err.contains("budget"), "{err}");
    }
}

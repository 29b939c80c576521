//! Routing-daemon configuration, pure: which RouterConfig governs a node and the kernel
//! contract it sets ([`select`]), the template context ([`context`]), and rendering a
//! template with it. Validating, writing and reloading a daemon is `routelb::daemon`'s.

pub mod context;
pub mod select;

pub use select::{ContractFlags, Selection, contract, select};

/// Why a template did not render: tera's message with its chain (line, variable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("render the template: {0}")]
pub struct RenderError(pub String);

/// Renders a template with a context. Nothing is escaped: values were validated when the
/// context was built.
pub fn render(template: &str, context: &context::Context) -> Result<String, RenderError> {
    let flatten = |e: tera::Error| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        RenderError(msg)
    };
    let ctx = tera::Context::from_serialize(context).map_err(flatten)?;
    tera::Tera::one_off(template, &ctx, false).map_err(flatten)
}

/// Reads a template context from its text, JSON or YAML, of this routelb's version.
pub fn parse_context(raw: &str) -> Result<context::Context, String> {
    let ctx: context::Context = match serde_json::from_str(raw) {
        Ok(c) => c,
        Err(json_err) => serde_saphyr::from_str(raw).map_err(|yaml_err| {
            format!("neither a JSON ({json_err}) nor a YAML ({yaml_err}) template context")
        })?,
    };
    if ctx.version != context::CONTEXT_VERSION {
        return Err(format!(
            "context version {}, this routelb renders version {}",
            ctx.version,
            context::CONTEXT_VERSION
        ));
    }
    Ok(ctx)
}

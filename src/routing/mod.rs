//! Routing daemons: the template context (pure), rendering, and the daemons' control
//! (validate, write atomically, reload only on change, never restart).

pub mod context;
pub mod daemon;

use anyhow::Context as _;

/// Renders a template with a context. Nothing is escaped: values were validated when the
/// context was built.
pub fn render(template: &str, context: &context::Context) -> anyhow::Result<String> {
    let ctx = tera::Context::from_serialize(context).context("serialize the template context")?;
    tera::Tera::one_off(template, &ctx, false).map_err(|e| {
        // tera's chain holds the useful part (line, variable); flatten it.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        anyhow::anyhow!("render the template: {msg}")
    })
}

/// Renders a template file with a context file (JSON or YAML): `routelb render`.
pub fn render_files(
    template: &std::path::Path,
    context: &std::path::Path,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("read {}", template.display()))?;
    let raw =
        std::fs::read_to_string(context).with_context(|| format!("read {}", context.display()))?;
    let ctx: context::Context = match serde_json::from_str(&raw) {
        Ok(c) => c,
        Err(json_err) => serde_saphyr::from_str(&raw).map_err(|yaml_err| {
            anyhow::anyhow!(
                "{} is neither a JSON ({json_err}) nor a YAML ({yaml_err}) template context",
                context.display()
            )
        })?,
    };
    if ctx.version != context::CONTEXT_VERSION {
        anyhow::bail!(
            "{} has context version {}, this routelb renders version {}",
            context.display(),
            ctx.version,
            context::CONTEXT_VERSION
        );
    }
    render(&text, &ctx)
}

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};

/// Escapes a value for the inside of an HCL quoted string (`"..."`).
///
/// Consul and Nomad parse their config with HCL 1, which has no `$${`
/// escape: a literal `${` or `%{` would open an interpolation. The `$`/`%`
/// is written as a `\u` escape instead, which both HCL 1 and HCL 2 decode
/// to the plain character without treating it as template syntax.
pub(crate) fn hcl_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a value for the inside of a JSON string.
pub(crate) fn json_string(value: &str) -> String {
    let quoted = serde_json::to_string(value).expect("a string serialises");
    quoted[1..quoted.len() - 1].to_owned()
}

/// Quotes a value as one POSIX shell word: `'...'`, with each `'` written
/// as `'\''`. Nothing inside single quotes is special to the shell.
pub(crate) fn shell_word(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// `{{{hcl-list values}}}`: an HCL list of quoted, escaped strings.
pub(crate) fn hcl_list_helper(
    h: &Helper,
    _: &Handlebars,
    _: &Context,
    _: &mut RenderContext,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("hcl-list", 0))?;
    let items = param.value().as_array().ok_or_else(|| {
        RenderErrorReason::ParamTypeMismatchForName(
            "hcl-list",
            param.relative_path().cloned().unwrap_or_default(),
            "array".to_owned(),
        )
    })?;
    let quoted: Vec<String> = items
        .iter()
        .map(|v| match v {
            serde_json::Value::String(s) => format!("\"{}\"", hcl_string(s)),
            other => format!("\"{}\"", hcl_string(&other.to_string())),
        })
        .collect();
    out.write(&format!("[{}]", quoted.join(", ")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_escapes_quotes_newlines_and_interpolation() {
        assert_eq!(hcl_string(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(hcl_string("x\ny"), "x\\ny");
        assert_eq!(hcl_string("${env}"), "\\u0024{env}");
        assert_eq!(hcl_string("%{if}"), "\\u0025{if}");
        assert_eq!(hcl_string("100% $5"), "100% $5");
        assert_eq!(hcl_string("\u{7}"), "\\u0007");
    }

    #[test]
    fn shell_words_are_single_quoted() {
        assert_eq!(
            shell_word("/etc/consul.d/tls/ca.pem"),
            "'/etc/consul.d/tls/ca.pem'"
        );
        assert_eq!(shell_word("a'b $(x)"), "'a'\\''b $(x)'");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_string("a\"b\n"), "a\\\"b\\n");
    }
}

//! The one error type of the crate.

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate {what}: {detail}")]
    Generate { what: String, detail: String },
    #[error("{what} is not a valid PEM bundle: {detail}")]
    Bundle { what: String, detail: String },
    #[error(
        "the {authority} intermediate may not issue a certificate for {name:?} \
         (it permits {permitted}); a node can only get certificates for its own roles"
    )]
    NotPermitted {
        authority: String,
        name: String,
        permitted: String,
    },
    #[error("{what} is not a valid certificate: {detail}")]
    Certificate { what: String, detail: String },
}

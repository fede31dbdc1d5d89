//! placeholder, replaced by the registrar work

//! thorn

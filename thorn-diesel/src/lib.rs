//! diesel

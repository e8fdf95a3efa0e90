//! Integration tests: one binary, a module per concern.

mod util;

mod budget;
mod cli;
mod exactness;
mod exposition;
mod secrets;

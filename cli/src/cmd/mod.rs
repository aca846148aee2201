//! One module per subcommand, each with its `Args` and a `run` that writes to `impl Write`.

pub mod bench;
pub mod cat;
pub mod extract;
pub mod index;
pub mod info;
pub mod ls;
pub mod merge;
pub mod pack;
pub mod plan;
pub mod verify;

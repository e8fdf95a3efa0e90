//! The ClawMesh API simulator used by the demo and the tests.

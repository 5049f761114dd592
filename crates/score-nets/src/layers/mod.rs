//! Building blocks of NCSN++ / DDPM++ (`models/layers.py`, `models/layerspp.py`,
//! `models/up_or_down_sampling.py`), with parameter names of the PyTorch `state_dict`.

mod embedding;

pub use embedding::*;

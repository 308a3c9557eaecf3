//! What a sub-machine may touch while it handles one input.

use std::collections::VecDeque;

use crate::config::Config;
use crate::ids::{LocalDevice, Timestamp};
use crate::output::{Event, Output};
use crate::rng::Rng;
use crate::sends::SendTable;

pub(crate) struct Ctx<'a> {
    pub(crate) now: Timestamp,
    pub(crate) config: &'a Config,
    pub(crate) local: &'a LocalDevice,
    pub(crate) rng: &'a mut Rng,
    pub(crate) out: &'a mut VecDeque<Output>,
    pub(crate) sends: &'a mut SendTable,
}

impl Ctx<'_> {
    pub(crate) fn emit(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }
}

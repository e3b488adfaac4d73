"""``awsneuron:`` — the AWSNeuron section of ``device-config.yaml``, next to its backend
(:mod:`hami.devices.awsneuron`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from hami.config._base import SectionModel
from hami.config._types import ResourceName

__all__ = ["AWSNeuronConfig"]


class AWSNeuronConfig(SectionModel):
    """``awsneuron:`` — whole Neuron devices or NeuronCores."""

    resource_count_name: ResourceName = "aws.amazon.com/neuron"
    resource_core_name: ResourceName = "aws.amazon.com/neuroncore"

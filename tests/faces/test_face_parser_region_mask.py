"""FaceParser.region_mask: a region's hard parse (the argmax class is one of the region's classes), the binary
mask SAT3D's channel pre-selection and background loss take (methods.sat3d.regions.binary_region)."""

from __future__ import annotations

import torch
from helpers.parsing import official_state

from targetclip_core.faces import parsing as fp
from targetclip_core.methods.sat3d.regions import binary_region

torch.set_num_threads(1)


def test_region_mask_is_the_argmax_parse_of_the_region_classes():
    net = fp.BiSeNet()
    net.load_state_dict(official_state())
    parser = fp.FaceParser(net, input_size=32)
    images = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = parser.labels(images)
    for region in ("hair", "face", "lower_face", "glasses", "skin"):
        got = parser.region_mask(images, region)
        assert got.dtype == torch.bool and got.shape == (2, 24, 24)
        want = torch.zeros_like(got)
        for name in fp.REGIONS.get(region, (region,)):
            want |= labels == fp.CLASSES.index(name)
        assert torch.equal(got, want)
        assert torch.equal(binary_region(parser, images, region), got)  # the hard parse, not the soft mask > 0.5
    everything = parser.region_mask(images, "foreground") | parser.region_mask(images, "background")
    assert everything.all()

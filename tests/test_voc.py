from edgeseg.data.voc import VOC_CLASSES, voc_palette


def test_palette_matches_voc_colours():
    palette = voc_palette()
    assert palette.shape == (256, 3)
    assert tuple(palette[0]) == (0, 0, 0)
    assert tuple(palette[VOC_CLASSES.index("aeroplane")]) == (128, 0, 0)
    assert tuple(palette[VOC_CLASSES.index("cat")]) == (64, 0, 0)
    assert tuple(palette[VOC_CLASSES.index("person")]) == (192, 128, 128)
    assert tuple(palette[255]) == (224, 224, 192)  # the boundary colour in VOC masks
    assert len(VOC_CLASSES) == 21

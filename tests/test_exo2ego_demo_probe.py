"""The demo's recognition probe: caption words sorted into the classes the exo view can teach."""
from exo2ego_jax.methods.exo2ego import demo_probe as probe


def test_word_classes_follow_the_world_vocabulary():
    colours, shapes = {"red", "cyan"}, {"cup", "bottle"}
    words = "C picks up the Red cup with the left hand".split()
    got = [probe.word_class(w, colours, shapes) for w in words]
    assert got == ["other", "verb", "other", "other", "colour", "shape", "other", "other", "hand", "other"]
    assert probe.word_class("bowl", colours, shapes) == "other"  # only the world's own shapes count
    assert set(probe.WORD_CLASSES) == {"colour", "shape", "verb", "hand", "other"}

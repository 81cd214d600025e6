"""Tools used on a run: runs (load one), serving (export), checks (is it a bijection?),
figures (the pictures of glow_tf.sample) and benchmark."""

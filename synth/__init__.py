"""Scene synthesis: sampling (pure Python), Blender rendering, ground truth, Ray jobs, shards, publishing."""

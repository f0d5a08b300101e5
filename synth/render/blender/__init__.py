"""Blender (bpy) rendering of a SceneSpec. The only package that imports bpy; keep it a thin layer.

Import ``synth.render.blender.renderer.BlenderRenderer``; importing this package itself does not import bpy.
"""

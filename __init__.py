"""ComfyUI entry point of the MimicBrush node pack: registers the nodes and model folders, nothing more.

Outside ComfyUI (the test runner imports this folder as a package too) there is nothing to
register, and the node layer, which needs ComfyUI's modules, is not imported.
"""

try:
    import folder_paths  # noqa: F401  (a ComfyUI module)
except ImportError:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

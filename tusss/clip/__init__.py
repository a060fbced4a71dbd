"""DBA-CLIP: mask embeddings (``DBAClip.embed_masks``), text embeddings, templates and vocabularies."""

from tusss.clip.config import DBAClipConfig, preset_names
from tusss.clip.model import DBAClip
from tusss.clip.templates import get_templates
from tusss.clip.vocabularies import Vocabulary, get_vocabulary

__all__ = ["DBAClip", "DBAClipConfig", "Vocabulary", "get_templates", "get_vocabulary", "preset_names"]

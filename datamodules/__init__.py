"""Data modules of lit_distill: one file per modality family.

- :mod:`datamodules.text`: causal-LM text (plain documents or prompt/response pairs).
- :mod:`datamodules.cross_tokenizer`: the same text under a student and a teacher
  tokenizer, with answer masks, byte offsets and ALM chunk alignment.
- :mod:`datamodules.vision`: image classification (ImageFolder, scikit-learn's digits),
  long-tailed subsampling, strong/teacher views, mixup/cutmix.
- :mod:`datamodules.local_corpus`, :mod:`datamodules.tokenizer_training`: an offline
  English corpus and tiny tokenizers for examples and tests.
"""

from datamodules.cross_tokenizer import CrossTokenizerDataModule
from datamodules.local_corpus import write_local_corpus
from datamodules.segmentation import SegmentationDataModule
from datamodules.speech import SpeechDataModule, synthesize_speech_corpus
from datamodules.teacher_cache import CachedTeacherDataModule
from datamodules.text import TextDataModule
from datamodules.tokenizer_training import train_tokenizer
from datamodules.vision import ImageClassificationDataModule
from datamodules.vlm import VLMDataModule, write_digit_vqa

__all__ = ["CrossTokenizerDataModule", "ImageClassificationDataModule", "TextDataModule", "train_tokenizer",
           "write_local_corpus", "VLMDataModule", "write_digit_vqa"]
__all__ += ["SegmentationDataModule"]
__all__ += ["CachedTeacherDataModule"]
__all__ += ["SpeechDataModule", "synthesize_speech_corpus"]

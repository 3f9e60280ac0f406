"""Data modules of lit_distill: one file per modality family.

- :mod:`datamodules.text`: causal-LM text (plain documents or prompt/response pairs).
- :mod:`datamodules.cross_tokenizer`: the same text under a student and a teacher
  tokenizer, with answer masks, byte offsets and ALM chunk alignment.
- :mod:`datamodules.text_classification`: labelled texts or sentence pairs (CSV/JSONL) for
  encoders, each teacher with its own tokenizer.
- :mod:`datamodules.vision`: image classification (ImageFolder, scikit-learn's digits),
  long-tailed subsampling, strong/teacher views, mixup/cutmix.
- :mod:`datamodules.asr`: whole utterances with character targets, for CTC speech recognition, and
  token sequences with character targets, for CTC probes.
- :mod:`datamodules.digit_presence`: multi-label digit presence on generated digit scenes.
- :mod:`datamodules.local_corpus`, :mod:`datamodules.tokenizer_training`: an offline
  English corpus and tiny tokenizers for examples and tests.

Names are imported from their module on first use (:mod:`lit_distill.lazy_exports`), so
``datamodules.TextDataModule`` does not load torchvision or torchaudio.
"""

from lit_distill.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "datamodules.asr": ["ASRDataModule", "TokenCTCDataModule"],
    "datamodules.cross_tokenizer": ["CrossTokenizerDataModule"],
    "datamodules.digit_presence": ["DigitPresenceDataModule"],
    "datamodules.local_corpus": ["write_local_corpus"],
    "datamodules.segmentation": ["SegmentationDataModule"],
    "datamodules.speech": ["SpeechDataModule", "synthesize_speech_corpus"],
    "datamodules.teacher_cache": ["CachedTeacherDataModule"],
    "datamodules.text": ["TextDataModule"],
    "datamodules.text_classification": ["TextClassificationDataModule"],
    "datamodules.tokenizer_training": ["train_tokenizer"],
    "datamodules.vision": ["ImageClassificationDataModule"],
    "datamodules.vlm": ["VLMDataModule", "write_digit_vqa"],
})

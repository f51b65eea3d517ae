#!/usr/bin/env bash
# Makes sure Tesseract and the languages rag_core/ocr.py reads with (eng, fra, nld, kor, plus osd
# for page orientation) are installed, installing the missing ones with apt-get, so OCR tests never
# skip and scanned pages are read. Does nothing when `tesseract --list-langs` already lists them all.
set -euo pipefail
LANGS=(eng fra nld kor osd)
installed=""
if command -v tesseract >/dev/null; then
  installed="$(tesseract --list-langs 2>/dev/null | tail -n +2 || true)"
fi
missing=()
command -v tesseract >/dev/null || missing+=(tesseract-ocr)
for lang in "${LANGS[@]}"; do
  grep -qx "$lang" <<<"$installed" || missing+=("tesseract-ocr-$lang")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
bash "$(dirname "$0")/apt_install.sh" "${missing[@]}"
for lang in "${LANGS[@]}"; do
  if ! tesseract --list-langs 2>/dev/null | tail -n +2 | grep -qx "$lang"; then
    echo "ensure_ocr.sh: installed ${missing[*]} but tesseract still does not list '$lang'" >&2
    exit 1
  fi
done

"""Captions on pictures: white text on a dark box, readable on any background.

An outline drawn as the same text with a thicker stroke does not work with OpenCV's Hershey fonts:
the advance of each glyph grows with the stroke thickness, so the outline drifts away from the text
along the line."""

import cv2

FONT = cv2.FONT_HERSHEY_SIMPLEX


def put_caption(picture, text, origin, scale, padding=3):
    """Draw text with its baseline starting at origin (x, y) on a filled dark box, in place.

    Returns the box (x0, y0, x1, y1), inclusive, clipped to the picture."""
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    x, y = origin
    x0, y0 = max(0, x - padding), max(0, y - height - padding)
    x1 = min(picture.shape[1] - 1, x + width + padding)
    y1 = min(picture.shape[0] - 1, y + baseline + padding)
    cv2.rectangle(picture, (x0, y0), (x1, y1), (0, 0, 0), thickness=-1)
    cv2.putText(picture, text, (x, y), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return x0, y0, x1, y1

"""Hand-made answers shared by the quality tests (and the score_speed benchmark)."""

JOKE_PROMPT = "tell me a joke."

# The seed's failure mode: a fluent, finished, encyclopaedic paragraph about ink in reply to "tell me a joke.".
INK_ANSWER = (
    "Ink is a liquid or paste that contains pigments or dyes and is used to color a surface to produce an image, "
    "text, or design. It is used for drawing or writing with a pen, brush, reed pen, or quill. Thicker inks, in "
    "paste form, are used extensively in letterpress and lithographic printing. Ink can be a complex medium, "
    "composed of solvents, pigments, dyes, resins, lubricants, solubilizers, surfactants, particulate matter, "
    "fluorescents, and other materials. The components of inks serve many purposes; the ink's carrier, colorants, "
    "and other additives affect the flow and thickness of the ink and its dry appearance."
)

JOKE_ANSWER = "Why don't scientists trust atoms? Because they make up everything!"

LOOPING_ANSWER = " ".join(["I am a helpful assistant and I can help you with that."] * 12)

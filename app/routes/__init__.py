"""One router per area: score, models, health (+ metrics, mounted by app.metrics), ui."""

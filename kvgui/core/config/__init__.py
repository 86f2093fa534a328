"""The one Settings object and the app's saved configuration."""

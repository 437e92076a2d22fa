"""Ready-made metadata and feedback hooks (AWS integrations live here)."""

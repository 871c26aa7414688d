"""ntmobile.osops"""
